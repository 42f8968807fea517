"""schemathesis over the OpenAPI document: no generated request, however odd, gets a 5xx.

Every operation the app documents is called with inputs generated from its schema, with an
admin's token (so the requests get past authentication into the routes), on an archive that
holds a small CT series. The only check is the server's: a 4xx is a fine answer to nonsense,
a 5xx never is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fixtures.synthetic import ct_series, write_datasets
from tests.web.conftest import WebArchive

EXAMPLES_PER_OPERATION = 12


def test_no_generated_request_gets_a_server_error(web: WebArchive, tmp_path: Path) -> None:
    for path in write_datasets(ct_series(2, rows=32, cols=32, seed=5), tmp_path / "ct"):
        web.ingest_file(path)
    schema = schemathesis.openapi.from_asgi("/openapi.json", web.app)
    headers = {"Authorization": f"Bearer {web.tokens['admin']}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

        call()
    assert operations > 10
    assert not failures, "\n".join(failures[:20])
