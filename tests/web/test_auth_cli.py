"""`filmless user` and `filmless apikey` on the archive the web app serves: what they change
takes effect in the API, each change is audited with the OS user and host "cli", and mistakes
end with a message and a non-zero status."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from filmless import cli, web_commands
from storage.index.users import Users
from tests.web.conftest import PASSWORD, WebArchive

NEW_PASSWORD = "mật khẩu mới dài"


def _run(web: WebArchive, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    settings = web.archive.settings
    location = ["--data", str(settings.data)] + (["--index", settings.index] if settings.index else [])
    capsys.readouterr()
    status = cli.main([*args, *location])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _sign_in(web: WebArchive, username: str, password: str) -> int:
    reply = web.anonymous.post("/api/token", data={"username": username, "password": password})
    return int(reply.status_code)


def _cli_events(web: WebArchive) -> list[Any]:
    return [e for e in web.archive.index.audit_events(200) if e.actor_host == "cli"]


def test_user_add_list_and_sign_in(web: WebArchive, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(web, capsys, "user", "add", "bs.lan", "--role", "radiologist", "--password", NEW_PASSWORD, "--full-name", "BS. Lan")
    assert status == 0 and "added user bs.lan" in out
    assert _sign_in(web, "bs.lan", NEW_PASSWORD) == 200

    status, out, _ = _run(web, capsys, "user", "list", "--json")
    listed = {u["username"]: u for u in json.loads(out)}
    assert listed["bs.lan"]["role"] == "radiologist" and listed["bs.lan"]["full_name"] == "BS. Lan"
    assert "argon2" not in out
    status, out, _ = _run(web, capsys, "user", "list")
    assert status == 0 and "bs.lan" in out

    [event] = _cli_events(web)
    assert event.action == "admin.user" and event.outcome == "success"
    assert event.actor == web_commands.os_user()
    assert json.loads(event.detail) == {"op": "add", "user": "bs.lan", "role": "radiologist"}


def test_password_from_stdin_and_from_the_prompt(
    web: WebArchive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    status, _out, err = _run(web, capsys, "user", "passwd", "clinician1", "--password-stdin")
    assert status == 0, err
    assert _sign_in(web, "clinician1", NEW_PASSWORD) == 200 and _sign_in(web, "clinician1", PASSWORD) == 401

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["một hai ba bốn năm", "một hai ba bốn năm"])
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    status, _out, err = _run(web, capsys, "user", "add", "ktv.binh", "--role", "technologist")
    assert status == 0, err
    assert _sign_in(web, "ktv.binh", "một hai ba bốn năm") == 200

    answers = iter(["first password", "second password"])
    status, _out, err = _run(web, capsys, "user", "add", "ktv.chi", "--role", "technologist")
    assert status == 2 and "differ" in err
    assert Users(web.archive.index).get("ktv.chi") is None


def test_mistakes_are_refused_with_a_message(
    web: WebArchive, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    before = len(Users(web.archive.index).all())
    status, _out, err = _run(web, capsys, "user", "add", "admin1", "--role", "admin", "--password", NEW_PASSWORD)
    assert status == 1 and "exists already" in err
    status, _out, err = _run(web, capsys, "user", "add", "x", "--role", "clinician", "--password", "short")
    assert status == 2 and "at least 8" in err
    status, _out, err = _run(web, capsys, "user", "add", "x", "--role", "clinician")  # not a terminal
    assert status == 2 and "--password-stdin" in err
    status, _out, err = _run(web, capsys, "user", "add", "x", "--role", "clinician", "--password-stdin")
    assert status == 2 and "standard input" in err
    with pytest.raises(SystemExit) as exited:
        _run(web, capsys, "user", "add", "x", "--role", "janitor", "--password", NEW_PASSWORD)
    assert exited.value.code == 2
    status, _out, err = _run(web, capsys, "user", "passwd", "nobody", "--password", NEW_PASSWORD)
    assert status == 1 and "no user 'nobody'" in err
    status, _out, err = _run(web, capsys, "user", "disable", "admin1")
    assert status == 1 and "last enabled administrator" in err
    status, _out, err = _run(web, capsys, "user", "role", "admin1", "clinician")
    assert status == 1 and "last enabled administrator" in err
    assert len(Users(web.archive.index).all()) == before
    assert Users(web.archive.index).require("admin1").role == "admin"
    failures = [json.loads(e.detail)["op"] for e in _cli_events(web) if e.outcome == "failure"]
    assert sorted(failures) == ["add", "disable", "passwd", "role"]


def test_a_user_with_api_keys_only(web: WebArchive, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(web, capsys, "user", "add", "his", "--role", "integration", "--no-password", "--full-name", "HIS")
    assert status == 0 and "API keys only" in out
    status, key, err = _run(web, capsys, "apikey", "add", "his", "--description", "HIS of the hospital", "--expires-days", "365")
    assert status == 0 and "shown this once" in err
    key = key.strip()
    assert key.startswith("flk_")
    me = web.anonymous.get("/api/me", headers={"X-API-Key": key})
    assert me.status_code == 200 and me.json()["username"] == "his"

    status, out, _ = _run(web, capsys, "apikey", "list", "--json", "--user", "his")
    [listed] = json.loads(out)
    assert listed["description"] == "HIS of the hospital" and listed["expires_at"] and key not in out
    status, out, _ = _run(web, capsys, "apikey", "list")
    assert status == 0 and listed["key_id"] in out

    status, out, _ = _run(web, capsys, "apikey", "revoke", key)  # the whole key names its id too
    assert status == 0 and f"revoked API key {listed['key_id']}" in out
    web.app.state.web.security.forget()  # another process did it: no need to wait for the cache
    assert web.anonymous.get("/api/me", headers={"X-API-Key": key}).status_code == 401

    status, _out, err = _run(web, capsys, "apikey", "add", "nobody")
    assert status == 1 and "no user" in err
    status, _out, err = _run(web, capsys, "apikey", "add", "his", "--expires-days", "0")
    assert status == 2
    status, _out, err = _run(web, capsys, "apikey", "revoke", "000000000000")
    assert status == 1 and "no API key" in err
    ops = [(e.action, json.loads(e.detail)["op"], e.outcome) for e in reversed(_cli_events(web))]
    assert ops == [
        ("admin.user", "add", "success"),
        ("admin.api_key", "add", "success"),
        ("admin.api_key", "revoke", "success"),
        ("admin.api_key", "add", "failure"),
        ("admin.api_key", "revoke", "failure"),
    ]


def test_disable_enable_and_role_take_effect_in_the_api(web: WebArchive, capsys: pytest.CaptureFixture[str]) -> None:
    security = web.app.state.web.security
    assert _run(web, capsys, "user", "disable", "radiologist1")[0] == 0
    security.forget()
    assert web.client("radiologist").get("/api/me").status_code == 401
    assert _sign_in(web, "radiologist1", PASSWORD) == 401
    assert _run(web, capsys, "user", "enable", "radiologist1")[0] == 0
    assert _run(web, capsys, "user", "role", "radiologist1", "admin")[0] == 0
    security.forget()
    assert web.client("radiologist").get("/api/me").json()["role"] == "admin"
