"""The ServerApp's run folder: a new one per run, and one clear line where it cannot be made."""

from __future__ import annotations

import pytest

from fedrouter_app.apps.server_app import create_run_dir
from fedrouter_app.schema.checks import ConfigError


def test_a_run_folder_is_never_reused(make_cfg, tmp_path):
    cfg = make_cfg(f"output.dir={tmp_path}", "output.run_name=same")
    first, second = create_run_dir(cfg), create_run_dir(cfg)
    assert first.name == "same" and second.name == "same-1" and first.is_dir() and second.is_dir()


def test_an_output_dir_that_cannot_hold_folders_is_one_line_naming_the_key(make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = make_cfg(f"output.dir={blocker / 'runs'}")
    with pytest.raises(ConfigError) as info:
        create_run_dir(cfg)
    message = str(info.value)
    assert message.startswith(f"output.dir={blocker / 'runs'}: cannot create the run's folder there")
    assert "\n" not in message
