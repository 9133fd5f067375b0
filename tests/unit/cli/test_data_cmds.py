"""``lstmdet data``: generated datasets written as COCO."""

from __future__ import annotations

import pytest

from lstmdet.cli.main import main


@pytest.mark.parametrize("action", ["digits-det", "digits-video"])
def test_help_documents_the_default_split(action, capsys):
    with pytest.raises(SystemExit):
        main(["data", action, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "train (default)" in text
