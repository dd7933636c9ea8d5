"""The CLI's environment variables and the settings' override namespace do not collide."""

from __future__ import annotations

from shared.config import CLI_TOKEN_ENV, CLI_URL_ENV, RESERVED_ENV, env_settings, load_config


def test_the_cli_url_is_reserved_and_never_a_setting() -> None:
    settings = env_settings()
    assert CLI_URL_ENV in RESERVED_ENV
    assert not RESERVED_ENV & settings.keys(), "a setting took a reserved variable's name"
    # The token is one secret under one name: the admin service checks it, the CLI sends it.
    assert settings[CLI_TOKEN_ENV] == ("admin", "token")


def test_exporting_the_cli_variables_leaves_the_config_loadable() -> None:
    config = load_config(None, {CLI_URL_ENV: "http://10.0.0.1:8081", CLI_TOKEN_ENV: "s3cret"})
    assert config.admin.token == "s3cret"
    assert config.admin.listen_address == "127.0.0.1:8081"  # the CLI's URL changes no setting


def test_every_name_the_tooling_uses_is_a_setting_or_reserved() -> None:
    """A variable exported for the Compose file or the scripts must not make every service exit 2."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[3]
    files = [root / "Makefile", *(p for d in ("compose", "k8s", "scripts", ".ci") for p in (root / d).rglob("*"))]
    names: dict[str, str] = {}
    for path in files:
        if path.is_file():
            for name in re.findall(r"\bGOBALANCER_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")):
                names.setdefault(name, str(path.relative_to(root)))
    for path in (p for d in ("shared", "services", "tests") for p in (root / d).rglob("*.py")):
        for name in re.findall(r'environ(?:\.get)?\(\s*"(GOBALANCER_[A-Z0-9_]+)"', path.read_text()):
            names.setdefault(name, str(path.relative_to(root)))  # read by the code itself
    settings = env_settings()
    unknown = {name: where for name, where in names.items() if name not in settings and name not in RESERVED_ENV}
    assert not unknown, f"neither settings nor reserved (shared/config/loading.py RESERVED_ENV): {unknown}"
    assert names, "the scan found nothing: the tooling's files moved?"
