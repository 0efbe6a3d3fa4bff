"""The command line's ids: one that begins with "-" is still the verb's id."""

from __future__ import annotations

import pytest

from bridge.__main__ import parse_args


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["export", "-AbC", "-c", "x.yaml"], {"target": "-AbC", "config": "x.yaml"}),
        (["export", "--format", "jsonl", "-Zz", "-o", "f"], {"target": "-Zz", "output": "f"}),
        (["-c", "y.yaml", "export", "abc"], {"target": "abc", "config": "y.yaml"}),
        (["export", "--", "-x"], {"target": "-x"}),
        (["token", "-u1", "--ttl", "5"], {"crm_user_id": "-u1", "ttl": 5}),
    ],
)
def test_an_id_beginning_with_a_dash_is_the_verbs_id(
    argv: list[str], expected: dict[str, object]
) -> None:
    args = vars(parse_args(argv))
    assert {k: args[k] for k in expected} == expected


def test_an_unknown_option_after_the_id_is_still_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(["export", "abc", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
