"""The Python API covers the CLI: every command has a counterpart (``mlic_edge.api.CLI_COUNTERPARTS``) taking the
request's fields as keyword arguments, refusing unknown ones in one line, reading a string given for a list as the
CLI does, and naming keyword arguments, not flags, in its errors' hints."""

from __future__ import annotations

import pytest

from mlic_edge import api
from mlic_edge.api import Run
from mlic_edge.errors import MlicError


def cli_commands() -> set[str]:
    """Every command of the Typer app, sub-apps included ("data synth", "export", "export triton", ...)."""
    import typer.main

    from mlic_edge.cli.app import app

    def walk(command, path: str):
        subcommands = getattr(command, "commands", None)  # a group (Typer's own click, so no isinstance)
        if subcommands is None:
            yield path
            return
        if path and command.invoke_without_command:  # `export` runs itself as well as its subcommands
            yield path
        for name, subcommand in subcommands.items():
            yield from walk(subcommand, f"{path} {name}".strip())

    return set(walk(typer.main.get_command(app), ""))


def test_every_cli_command_has_an_api_counterpart():
    commands = cli_commands()
    assert {"data synth", "export triton", "service uninstall", "demo"} <= commands  # the walk reaches the sub-apps
    missing = commands - set(api.CLI_COUNTERPARTS)
    assert not missing, f"CLI commands without a Python counterpart in mlic_edge.api.CLI_COUNTERPARTS: {missing}"
    for command, counterpart in api.CLI_COUNTERPARTS.items():
        assert command.split(" --")[0] in commands, f"{command} is no CLI command"
        assert callable(counterpart) and counterpart.__module__ == "mlic_edge.api", command
        assert counterpart.__name__ in api.__all__ or counterpart.__qualname__.startswith("Run."), command


# --- the new counterparts, each on small data -------------------------------------------------------------------
def test_synth_and_data_stats(synth_data, tmp_path):
    summary = api.synth(tmp_path / "data", classes=3, images=16, size=48)
    assert len(summary["classes"]) == 3 and summary["config"]["images"] == 16
    assert len((tmp_path / "data" / "ImageSets" / "Main" / "classes.txt").read_text().split()) == 3

    stats = api.data_stats(str(synth_data), heatmap=tmp_path / "heatmap.png")
    assert stats["images"] > 0 and len(stats["labels"]) == 4 and set(stats["class_counts"]) == set(stats["labels"])
    assert stats["heatmap"] == str(tmp_path / "heatmap.png") and (tmp_path / "heatmap.png").stat().st_size > 0


def test_models_lists_the_zoo_as_models_json_does():
    rows = {row["name"]: row for row in api.models(classes=20, flops=False)}
    assert set(rows) == {"baseline", "mlgcn", "mlgat", "semdep", "q2l", "msrn"}
    assert all(row["num_classes"] == 20 and "GFLOPs" not in row for row in rows.values())


def test_export_triton_and_deepstream(run_copy, tmp_path):
    run = Run(run_copy)
    model = run.export_triton(tmp_path / "repository", preferred="2, 4", name="tiny")
    assert model == tmp_path / "repository" / "tiny"
    config = (model / "config.pbtxt").read_text()
    assert "preferred_batch_size: 2\n  preferred_batch_size: 4" in config  # "2, 4": the CLI's --preferred 2,4
    assert (model / "1" / "model.onnx").is_file() and (model / "labels.txt").read_text().split() == run.spec.labels

    config_file = run.export_deepstream(tmp_path / "deepstream", mode="primary", threshold=0.4)
    assert config_file.name == "config_infer_primary.txt" and "classifier-threshold=0.4" in config_file.read_text()


def test_install_service_prints_and_uninstall_refuses_an_absent_service(trained_run, tmp_path):
    installed = Run(trained_run).install_service(out_dir=tmp_path / "out", name="door", print_only=True,
                                                 extra="--fps, 15")
    assert installed["steps"] == [] and installed["unit_name"] == "door.service"
    exec_start = next(line for line in installed["unit"].splitlines() if line.startswith("ExecStart="))
    assert f"--run {trained_run}" in exec_start and exec_start.endswith("--fps 15")
    assert installed["predictions"] in installed["logrotate"]
    assert not (tmp_path / "out").exists()

    with pytest.raises(MlicError, match="no service 'mlic-edge-api-test-absent'"):
        api.uninstall_service(name="mlic-edge-api-test-absent", dry_run=True)


def test_qat_needs_its_epochs_in_one_line(run_copy):
    with pytest.raises(MlicError) as caught:
        Run(run_copy).qat()
    assert str(caught.value) == "missing epochs for QatRequest (pass epochs=...)"
    with pytest.raises(MlicError, match="unknown option run for QatRequest"):
        Run(run_copy).qat(epochs=1, run="elsewhere")  # the run is the Run's own


@pytest.mark.slow
def test_qat_fine_tunes_the_run(run_copy):
    pytest.importorskip("modelopt", reason="quantization-aware training needs NVIDIA ModelOpt (the [qat] extra)")
    section = Run(run_copy).qat(epochs=1, calib_images=8, workers=0)
    assert section["by"] == "train --qat" and section["epochs"] == 1
    assert (run_copy / "model.int8.onnx").is_file() and (run_copy / "qat.pt").is_file()


def test_demo_runs_the_whole_path(tmp_path, capsys):
    result = api.demo(tmp_path / "demo", epochs=1, classes=3, images=48, size=48)
    assert result["parity"]["passed"] and result["latency"]["frames"] > 0
    for produced in ("run/model.onnx", "run/reference.npz", "run/checkpoint.pt", "video_predictions.jsonl",
                     "video_labeled.mp4", "data/video.mp4"):
        assert (tmp_path / "demo" / produced).is_file(), produced
    assert "Try next" in capsys.readouterr().err


# --- keyword arguments -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, fragments", [
    (lambda tmp: Run.train("voc:data", tmp / "run", epoch=1), ["unknown option epoch for TrainConfig", "epochs"]),
    (lambda tmp: Run(tmp).qat(epoch=1), ["unknown option epoch for QatRequest", "calib_images"]),
    (lambda tmp: Run(tmp).export_triton(tmp / "repo", max_batch_size=4), ["max_batch_size", "max_batch"]),
    (lambda tmp: Run(tmp).export_deepstream(tmp / "ds", gie_unique_id=3), ["gie_unique_id", "gie_id"]),
    (lambda tmp: Run(tmp).install_service(print=True), ["unknown option print", "print_only"]),
    (lambda tmp: Run(tmp).pack(image=False), ["unknown option image for Run.pack", "images"]),
    (lambda tmp: Run(tmp).doctor(json=True), ["unknown option json for Run.doctor"]),
    (lambda tmp: api.synth(tmp / "data", classes=3, image=16), ["unknown option image for SynthConfig", "images"]),
    (lambda tmp: api.data_stats("voc:data", splits="test"), ["unknown option splits for StatsRequest", "split"]),
    (lambda tmp: api.models(flop=False), ["unknown option flop for ModelsRequest", "flops"]),
    (lambda tmp: api.demo(tmp / "demo", epoch=1), ["unknown option epoch for DemoRequest", "epochs"]),
    (lambda tmp: api.uninstall_service(dryrun=True), ["unknown option dryrun for UninstallRequest", "dry_run"]),
    (lambda tmp: api.synth(), ["synth", "missing a required argument: 'out'"]),
])
def test_an_unknown_keyword_is_one_line_listing_the_valid_ones(tmp_path, call, fragments):
    with pytest.raises(MlicError) as caught:
        call(tmp_path)
    text = str(caught.value)
    assert "\n" not in text and all(fragment in text for fragment in fragments), text
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_a_string_for_a_list_is_one_item_or_comma_separated_items(run_copy, monkeypatch):
    from mlic_edge.commands import build as build_command
    from mlic_edge.commands.bench import BenchRequest
    from mlic_edge.commands.parity import ParityRequest

    assert api._request(ParityRequest, {"precisions": "fp32, int8"}).precisions == ("fp32", "int8")
    assert api._request(BenchRequest, {"batches": "1,4"}).batches == (1, 4)
    with pytest.raises(MlicError, match=r"batches '1,x' is not a comma-separated list of int"):
        api._request(BenchRequest, {"batches": "1,x"})

    built = []
    monkeypatch.setattr(build_command, "build", lambda run, request, progress: built.append(request))
    Run(run_copy).build("fp16", batch="8", keep_fp="/head/Gemm")
    assert built[0].batch == (1, 8, 8) and built[0].keep_fp == ["/head/Gemm"]  # as --batch-range 8, --keep-fp

    report = Run(run_copy).parity(precisions="fp32", backends="onnxruntime", device="cpu")
    assert [(result["precision"], result["backend"]) for result in report["results"]] == [("fp32", "onnxruntime")]


# --- hints in keyword arguments -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, keywords, expected", [
    ("pass --overwrite to move it, --resume to continue it, or --out for a new run",
     {"overwrite": True, "resume": True, "out": False},
     "pass overwrite=True to move it, resume=True to continue it, or out=... for a new run"),
    ("pass --calib-data DATA (a dataset), or --no-evaluate", {"calib_data": False, "evaluate": True},
     "pass calib_data=DATA (a dataset), or evaluate=False"),
    ("use --backend onnxruntime --device cpu", {"backend": False, "device": False},
     'use backend="onnxruntime", device="cpu"'),
    ("--epochs must be at least 1; pass --epochs 3 or more", {"epochs": False},
     "epochs=... must be at least 1; pass epochs=3 or more"),
    ("lower --lr or use a warm-up (--warmup-epochs)", {"lr": False, "warmup_epochs": False},
     "lower lr=... or use a warm-up (warmup_epochs=...)"),
    ("--queue-delay-us -5 is below 0", {"queue_delay_us": False}, "queue_delay_us=-5 is below 0"),
    ("run with sudo, or pass --print to write the unit", {"print_only": True},
     "run with sudo, or pass print_only=True to write the unit"),
    ("check --precision, --tolerance and --min-same", {"precisions": False, "tolerances": False,
                                                        "labelset_floors": False},
     "check precisions=..., tolerances=... and labelset_floors=..."),
    # a shell command stays a command a user can run; a flag that is no keyword of the call stays a flag
    ("train first (mlic-edge train --data DATA --out RUN), then mlic-edge train --qat --run RUN",
     {"data": False, "out": False}, "train first (mlic-edge train --data DATA --out RUN), then mlic-edge train --qat "
                                    "--run RUN"),
    ("use `mlic-edge service install ... --print` and start it, or --print", {"print_only": True},
     "use `mlic-edge service install ... --print` and start it, or print_only=True"),
    ("pass --run DIR (or --model NAME), --json", {"out": False}, "pass --run DIR (or --model NAME), --json"),
])
def test_flags_in_a_hint_are_written_as_keyword_arguments(text, keywords, expected):
    assert api._keyword_text(text, keywords) == expected


def test_a_refusal_through_the_api_names_keyword_arguments(synth_data, run_copy, tmp_path):
    with pytest.raises(MlicError) as caught:  # an exported run: training afresh into it needs overwrite
        Run.train(f"voc:{synth_data}", run_copy, backbone="resnet10t", epochs=1, img_size=64, workers=0,
                  pretrained=False)
    assert "pass overwrite=True to move the old generation to previous/, resume=True to continue it, or out=..." \
           in str(caught.value) and "--overwrite" not in str(caught.value)
    assert caught.value.args == (caught.value.message,)

    with pytest.raises(MlicError, match=r"^batch_timeout_ms=-5 is below 0"):  # a flag in the message itself
        Run(run_copy).export_triton(tmp_path / "repository", batch_timeout_ms=-5)

    records = Run(run_copy).predict(str(synth_data / "JPEGImages"), backend="torch", precision="int8")
    with pytest.raises(MlicError, match=r'\(use precision="fp32"\)$'):  # raised while the generator runs, too
        list(records)
