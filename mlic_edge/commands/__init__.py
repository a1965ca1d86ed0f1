"""What a command does, as a library: each module here is one stage driven end to end (the CLI only parses options,
calls and prints). ``build`` makes the fp16/int8 ONNX, calibrates, builds engines and writes the report."""
