"""``collapselab datasets``: the table of datasets and the offline download error."""

from __future__ import annotations

import json

from collapselab.cli import main


def test_datasets_command_lists_name_size_classes_resolution_and_presence(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    digits = next(line for line in out.splitlines() if line.startswith("digits"))
    assert "1,438" in digits and "1x8x8" in digits and "built-in" in digits
    cifar = next(line for line in out.splitlines() if line.startswith("cifar10 "))
    assert "50,000" in cifar and cifar.split()[-1] == "no"


def test_datasets_command_json_is_machine_readable(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["stl10"]["splits"]["unlabeled"] == 100000 and rows["cifar100"]["classes"] == 100


def test_download_of_unknown_dataset_exits_with_usage_error(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path), "--download", "cifar"]) == 2
    assert "unknown dataset 'cifar'" in capsys.readouterr().err


def test_download_suggests_the_near_miss_and_refuses_datasets_of_your_own_files(tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path), "--download", "cifar11"]) == 2
    assert "did you mean 'cifar10'?" in capsys.readouterr().err
    for name in ("npz", "imagefolder"):
        assert main(["datasets", "--data-dir", str(tmp_path), "--download", name]) == 2
        assert "nothing to download" in capsys.readouterr().err
