"""No silent partial read or write, as a user meets it on the command line: a damaged dataset file is refused in one
line naming the file and line, and ``run --append`` onto a file a killed run left mid-record cuts the fragment back
and says so. The readers' and the sinks' own cases are in test_data_readers.py, test_data_properties.py and
test_sinks.py."""

from __future__ import annotations

import json

from cli_helpers import assert_one_line_error, invoke
from test_data_readers import _voc_xml, make_csv, make_voc


def test_data_stats_refuses_a_csv_with_an_unterminated_quote_instead_of_reading_part(capsys, tmp_path):
    root = make_csv(tmp_path / "c", {"train": [(f"{i}.jpg", "dog" if i % 2 else "cat") for i in range(30)]})
    lines = (root / "train.csv").read_text().splitlines()
    lines[3] = '"2.jpg,dog,x'  # line 4: the quote swallows the 27 rows after it
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    result = invoke(capsys, "data", "stats", f"csv:{root}", "--heatmap", tmp_path / "heatmap.png")
    assert_one_line_error(result, f"{root / 'train.csv'}, line 4: the row starting here opens a quote that is never "
                                  "closed")
    assert result.code == 2


def test_data_stats_refuses_a_truncated_voc_annotation_naming_it(capsys, tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("dog", 0)], "b": [("cat", 0)]}, {"trainval": ["a", "b"]})
    (root / "Annotations" / "b.xml").write_text(_voc_xml("b.jpg", [("cat", 0)])[:80])
    result = invoke(capsys, "data", "stats", f"voc:{root}", "--heatmap", tmp_path / "heatmap.png")
    assert_one_line_error(result, f"{root / 'Annotations' / 'b.xml'}, line 1: invalid XML",
                          f"take 'b' out of {root / 'ImageSets' / 'Main' / 'trainval.txt'}")
    assert result.code == 2


def test_run_append_onto_a_partial_last_line_cuts_it_back_and_warns(capsys, trained_run, synth_data, tmp_path):
    out = tmp_path / "preds.jsonl"
    partial = '{"source": "killed mid-rec'
    out.write_text('{"index": 0}\n' + partial)
    result = invoke(capsys, "run", str(synth_data / "JPEGImages"), "--run", trained_run, "--out", out, "--append",
                    "--max-frames", 3)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert records[0] == {"index": 0} and len(records) == 4
    warning = " ".join(result.err.split())
    assert f"warning: {out} ended in a partial line" in warning
    assert f"cut back {len(partial)} byte(s) to its last whole line" in warning
