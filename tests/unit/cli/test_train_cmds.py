"""``lstmdet train`` and ``lstmdet eval`` arguments and messages."""

from __future__ import annotations

import pytest

from lstmdet.cli.main import main


def test_train_help_documents_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "model.encoder identity" in text and "512 (detect" in text and "224 (classify)" in text
