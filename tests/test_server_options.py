"""``sjff serve`` refuses every bad numeric option at start, in one clear line, with exit code 2.

The checks run ``sjff_server.main.main`` in process: argparse refuses the value before anything
starts (the repository given does not even exist), so no server is needed.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
import serving_utils as su
from sjff_client import AsyncClient
from sjff_server.harness import ServerProcess
from sjff_server.main import build_parser, config_from_args, main

#: option -> values it must refuse (given as ``--option=value``, so "-1" stays a value)
BAD: dict[str, list[str]] = {
    "--ort-threads": ["0", "-1", "1.5", "abc", "1025"],
    "--batch-window-us": ["-1", "1000001", "1e3"],
    "--workers": ["0", "-2", "x"],
    "--port": ["-1", "65536", "http"],
    "--metrics-port": ["-2", "65536", "x"],
    "--health-port": ["-2", "65536"],
    "--token-recheck-s": ["-1", "nan", "inf", "3601", "soon"],
    "--max-message-bytes": ["0", "-1", "100", str(2**31)],
    "--max-concurrent-rpcs": ["-1", "many"],
    "--max-request-rows": ["0", "-5"],
    "--max-learn-samples": ["0", "-5"],
    "--max-inflight-mb": ["0", "-1", "1.5"],
    "--max-inline-mmacs": ["-1", "lots"],
    "--max-eta": ["0", "-1", "nan", "inf", "-inf", "big"],
    "--shutdown-grace": ["-1", "nan", "inf"],
    "--cpus": ["x", "3-1"],
    "--processes": ["0", "-1", "1025", "two"],
    "--cpu-latency-us": ["-1", str(2**31), "low"],
    "--snapshot-every": ["-1", "often"],
    "--snapshot-interval": ["-0.5", "nan", "inf"],
    "--keep-snapshots": ["0", "-1"],
    "--max-group": ["0", "-1", "1.5", "abc"],
    "--max-learn-queue": ["0", "-1"],
    "--segment-mb": ["0", "-1", "0.5", str(2**20 + 1)],
    "--digest-every": ["-1", "sometimes"],
    "--replication-wait": ["-1", "65", "all"],
    "--replication-max-lag": ["-1", "1.5", "far"],
    "--replication-snapshot-every": ["0", "-1", "often"],
    "--replication-snapshots-keep": ["0", "1001", "x"],
    "--idempotency-window-s": ["0", "-1", "nan", "inf", str(31 * 86400), "day"],
    "--idempotency-max-mb": ["0", "-1", "1.5", str(2**20 + 1), "lots"],
    "--replica-timeout-s": ["0", "nan", "inf", "86401"],
}

#: options that take no number (flags, choices, paths, names)
NOT_NUMERIC = {
    "--help",
    "--model-repository",
    "--skip-bad-models",
    "--host",
    "--metrics-host",
    "--ready-file",
    "--reuse-port",
    "--token-file",
    "--token-env",
    "--protect-inference",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
    "--state-dir",
    "--reset-changed-models",
    "--log-level",
    "--log-format",
    "--replication",
    "--replication-password-file",
    "--replication-ca",
    "--replication-cert",
    "--replication-key",
    "--replication-prefix",
    "--replica-id",
}

CASES = [(opt, value) for opt, values in BAD.items() for value in values]


def test_every_option_is_covered():
    """A new option must be added to BAD (and validated) or NOT_NUMERIC: none is forgotten."""
    parser = build_parser()
    options = {a.option_strings[-1] for a in parser._actions if a.option_strings}  # noqa: SLF001
    assert options == set(BAD) | NOT_NUMERIC
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        assert action.type not in (int, float), f"{action.option_strings}: a bare int/float accepts 0, -1 and nan"


@pytest.mark.parametrize(("option", "value"), CASES, ids=[f"{o}={v}" for o, v in CASES])
def test_bad_value_is_refused_in_one_line(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model-repository", str(tmp_path / "none"), f"{option}={value}"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"sjff serve: error: argument {option}: "), lines[0]
    assert value in lines[0] or repr(value) in lines[0]


def test_messages_say_what_is_expected(tmp_path, capsys):
    for args, line in [
        (["--max-group", "0"], "sjff serve: error: argument --max-group: must be an integer >= 1, got 0"),
        (["--max-eta", "nan"], "sjff serve: error: argument --max-eta: must be a finite number > 0, got nan"),
        (["--port", "65536"], "sjff serve: error: argument --port: must be an integer in [0, 65535], got 65536"),
    ]:
        with pytest.raises(SystemExit):
            main(["--model-repository", str(tmp_path), *args])
        assert capsys.readouterr().err.strip() == line


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["--model-repository", "models", *args])


def test_boundary_values_are_accepted():
    args = parse(
        "--max-group=1",
        "--max-learn-queue=1",
        "--max-request-rows=1",
        "--max-learn-samples=1",
        "--workers=1",
        "--ort-threads=1",
        "--batch-window-us=0",
        "--max-message-bytes=4096",
        "--max-inflight-mb=1",
        "--max-inline-mmacs=0",
        "--max-eta=1e-9",
        "--shutdown-grace=0",
        "--snapshot-every=0",
        "--snapshot-interval=0",
        "--keep-snapshots=1",
        "--idempotency-window-s=1",
        "--idempotency-max-mb=1",
        "--cpu-latency-us=0",
        "--token-recheck-s=0",
        "--port=0",
        "--metrics-port=-1",
        "--health-port=-1",
    )
    cfg = config_from_args(args)
    assert (cfg.learn.max_group, cfg.learn.max_queue, cfg.learn.keep_snapshots) == (1, 1, 1)
    assert (cfg.learn.request_window_s, cfg.learn.request_window_bytes) == (1.0, 1 << 20)
    assert (cfg.port, cfg.metrics_port, cfg.health_port) == (0, None, None)
    assert cfg.max_eta == 1e-9 and args.token_recheck_s == 0.0 and args.cpu_latency_us == 0


def test_zero_concurrent_rpcs_means_unlimited():
    assert config_from_args(parse("--max-concurrent-rpcs=0")).max_concurrent_rpcs is None
    assert config_from_args(parse()).max_concurrent_rpcs == 1024


def test_max_group_one_learns_end_to_end(sjff_models, tmp_path):
    """The smallest valid group: concurrent updates are each made durable alone, in order."""
    repo = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    images, labels = su.mnist_test(8)
    token = su.write_token(tmp_path / "token")
    with ServerProcess(
        repo, state_dir=tmp_path / "state", token_file=token, extra_args=["--max-group", "1"], metrics=False
    ) as srv:

        async def learn_all():
            async with AsyncClient(srv.target, token_file=token) as c:
                done = await asyncio.gather(*(c.learn(images[i : i + 1], labels[i : i + 1]) for i in range(8)))
                return sorted(r.version for r in done), (await c.list_versions()).current_version

        versions, current = asyncio.run(learn_all())
    assert versions == list(range(1, 9)) and current == 8
    assert Path(tmp_path / "state").is_dir()
