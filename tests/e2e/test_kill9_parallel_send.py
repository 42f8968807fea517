"""kill -9 of `filmless serve` (local storage) while four storescu associations send at once:
after a restart every instance any of them saw acknowledged is indexed, intact and retrievable
by C-GET; `filmless verify` finds nothing missing or corrupt, and `filmless verify --repair`
removes what the crash left behind (objects written but never committed, partial files)
without touching anything the index references."""

from __future__ import annotations

import pytest
from pydicom import dcmread

from tests.e2e.faults import BackgroundStoreSCU, c_get_study, wait_until
from tests.e2e.support import (
    IndexView,
    StartFilmless,
    Synthetic,
    assert_attributes_preserved,
    assert_same_pixels,
    object_files,
    run_cli,
    sop_instance_uid,
    verify,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSOCIATIONS = 4
PER_ASSOCIATION = 50
KILL_AFTER = 60  # instances indexed, of 200


def test_kill_9_during_four_parallel_sends(start_filmless: StartFilmless, synthetic_data: Synthetic) -> None:
    files = synthetic_data.ct(960, slices=ASSOCIATIONS * PER_ASSOCIATION, size=256)
    by_path = {str(p): p for p in files}
    groups = [files[n::ASSOCIATIONS] for n in range(ASSOCIATIONS)]
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with start_filmless() as server:
        index = IndexView(server.data_dir)
        senders = [BackgroundStoreSCU(group, server, f"PARALLEL{n}") for n, group in enumerate(groups)]
        try:
            wait_until(lambda: index.count() >= KILL_AFTER or not all(s.running for s in senders), 180, "the kill point")
            assert all(s.running for s in senders), "a sender finished before the kill"
            server.kill()  # SIGKILL to filmless serve and its worker processes
        finally:
            outputs = [s.wait(120) for s in senders]
        acknowledged: list[str] = []
        for sender, output in zip(senders, outputs, strict=True):
            ok, _failed = sender.results()
            assert any(m in output for m in ("Store SCU Failed", "Association Aborted", "Peer aborted")), output[-600:]
            assert ok, f"association {sender.process.args} got nothing acknowledged"
            acknowledged += ok
        assert KILL_AFTER - ASSOCIATIONS <= len(acknowledged) < len(files)

        server.start()  # same data directory, same ports
        rows = index.instances()
        lost = [p for p in acknowledged if sop_instance_uid(by_path[p]) not in rows]
        assert not lost, f"{len(lost)} acknowledged instances lost: {lost[:3]}"
        for path in acknowledged:  # intact right away, compressed or not
            stored = index.stored_path(sop_instance_uid(by_path[path]))
            assert_same_pixels(by_path[path], stored)
            assert_attributes_preserved(by_path[path], stored)

        report = verify(server.data_dir)
        lines = report.stdout.splitlines()
        assert not [line for line in lines if line.startswith(("missing", "corrupt", "error"))], report.stdout
        # Objects written but not committed when the kill came: their senders got no success.
        # At most one write in flight per association, plus the speculative one started as the
        # next request arrived.
        orphans = [line for line in lines if line.startswith("orphan")]
        assert len(orphans) <= 2 * ASSOCIATIONS, report.stdout
        assert report.returncode == (1 if orphans else 0), report.stdout

        server.wait_compressed(timeout=300)  # the queue the crash left behind drains
        # A stray object and a partial file as a crash leaves them, so that repair has work
        # whatever the kill happened to catch.
        stray = server.data_dir / "objects" / "ff" / "ff" / "ffff0000000000000000000000000000"
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"written, never committed")
        partial = server.data_dir / "objects" / "ff" / "ff" / "ffff1111.4242.1.tmp"
        partial.write_bytes(b"half")
        # Nothing is being stored now, so leftovers of any age may go.
        repaired = run_cli("verify", "--repair", "--min-age", "0", "--data", str(server.data_dir))
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        removed = [line for line in repaired.stdout.splitlines() if line.startswith("removed")]
        assert len([line for line in removed if "orphan object" in line]) == len(orphans) + 1, repaired.stdout
        assert not stray.exists() and not partial.exists()
        assert [p for p in object_files(server.data_dir) if p.name.endswith(".tmp")] == []
        again = verify(server.data_dir)
        assert again.returncode == 0 and "orphan" not in again.stdout, again.stdout

        # Every acknowledged instance is retrievable, pixel for pixel.
        retrieved = c_get_study(server, study)
        indexed = index.instances()
        assert set(retrieved) == set(indexed)
        for path in acknowledged:
            sent = dcmread(by_path[path])
            got = retrieved[str(sent.SOPInstanceUID)]
            assert (got.pixel_array == sent.pixel_array).all()
        print(
            f"\nkill -9 of 4 associations: {len(acknowledged)} acknowledged, {len(indexed)} indexed, "
            f"{len(orphans)} orphans removed by verify --repair"
        )
