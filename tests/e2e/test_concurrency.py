"""Many modalities at once: 8 storescu processes, 50 instances each, in parallel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.support import (
    IndexView,
    StartFilmless,
    Synthetic,
    as_dict,
    assert_verify_ok,
    check_stored_instance,
    sop_instance_uid,
)
from tests.peers import LOOPBACK, FilmlessServer, peer_env, storescu_command

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SENDERS = 8
PER_SENDER = 50


@pytest.fixture(scope="module")
def server(start_filmless: StartFilmless) -> Iterator[FilmlessServer]:
    with start_filmless() as srv:
        yield srv


def test_parallel_storescu_senders(server: FilmlessServer, synthetic_data: Synthetic) -> None:
    # 256x256 slices keep the data small; seeds 900.. give 8 studies of 6 patients (seed % 6),
    # so several associations create the same patient at the same time.
    series = [synthetic_data.ct(900 + n, slices=PER_SENDER, size=256) for n in range(SENDERS)]
    expected = {sop_instance_uid(p) for files in series for p in files}
    assert len(expected) == SENDERS * PER_SENDER

    processes = [
        subprocess.Popen(
            storescu_command(files, LOOPBACK, server.dicom_port, server.aet, f"MODALITY{n}"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=peer_env(),
        )
        for n, files in enumerate(series)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for n, process in enumerate(processes):
        assert process.returncode == 0, f"sender {n} failed:\n{outputs[n][-3000:]}"

    final = as_dict(server.wait_compressed(timeout=600))
    assert final["instances"] == SENDERS * PER_SENDER
    assert (final["patients"], final["studies"], final["series"]) == (6, SENDERS, SENDERS)
    assert final["prior_versions"] == 0
    index = IndexView(server.data_dir)
    assert set(index.instances()) == expected
    assert index.query("SELECT count(DISTINCT sop_instance_uid), count(DISTINCT object_key) FROM instance")[0] == (
        SENDERS * PER_SENDER,
        SENDERS * PER_SENDER,
    )
    # Derived counts stayed right under concurrency.
    per_series = index.query("SELECT number_of_instances FROM series")
    assert sorted(n for (n,) in per_series) == [PER_SENDER] * SENDERS
    per_study = index.query("SELECT number_of_series, number_of_instances FROM study")
    assert sorted(per_study) == [(1, PER_SENDER)] * SENDERS
    assert_verify_ok(server.data_dir)
    # A sample of each series, read back in full.
    for files in series:
        for path in files[:: PER_SENDER // 5]:
            check_stored_instance(index, path)
