"""Suite-wide settings: offline, few threads, deterministic."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def featurize_killed_after_a_block(
    root, store: str, spec: dict, feat_kw: dict, marker, env: dict | None = None
) -> int:
    """Run featurize in a subprocess, SIGKILL it once its first block is written (its
    writer then sleeps), and return the dead process's pid."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    import pytest

    script = textwrap.dedent(
        f"""
        import time, torch
        torch.set_num_threads(1)
        from cellbag.featurize import create_encoder, run_featurize
        enc = create_encoder({spec["name"]!r}, weights={spec["weights"]!r},
                             image_size={spec["image_size"]})
        def slow(block):
            open({str(marker)!r}, "a").write(f"{{block}}\\n")
            time.sleep(120)
        run_featurize({str(root)!r}, {str(store)!r}, enc, on_block=slow, **{feat_kw!r})
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            if proc.poll() is not None:
                pytest.fail(f"featurize ended early: {proc.stderr.read().decode()[-800:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"featurize into {store} wrote no block within 120 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.pid


@pytest.fixture(scope="session")
def kill_9_featurize():
    """:func:`featurize_killed_after_a_block`, for tests in any folder."""
    return featurize_killed_after_a_block
