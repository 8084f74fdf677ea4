"""Member import: CSV (body or upload) and JSON, idempotent by phone, all or nothing, with
per-row errors and a body limit of its own."""

from __future__ import annotations

import csv
import io
import itertools

import pytest

from koinonia.models.core import ConsentEvent, Member
from koinonia.routes.member_import import IMPORT_PATH
from koinonia.services import member_import
from koinonia.web.state import get_state

IMPORT = "/api/members/import"
_numbers = itertools.count(1000)


def phones(n: int) -> list[str]:
    """Valid, fresh US numbers (+1 617 555 xxxx)."""
    return [f"+1617555{next(_numbers) % 10000:04d}" for _ in range(n)]


def csv_text(rows: list[dict[str, str]], header: list[str] | None = None) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header or list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def people(numbers: list[str], **extra: str) -> list[dict[str, str]]:
    return [{"firstName": f"Person{i}", "phone": p, **extra} for i, p in enumerate(numbers)]


async def post_csv(client, headers, text: str | bytes):
    data = text.encode() if isinstance(text, str) else text
    return await client.post(
        IMPORT, data=data, headers={**headers, "Content-Type": "text/csv; charset=utf-8"}
    )


async def count(church_id: str) -> int:
    return await Member.filter(church_id=church_id).count()


async def test_csv_import_creates_the_members_with_their_consent_history(client, church_a):
    numbers = phones(3)
    text = csv_text(
        [
            {"First Name": "Ann", "last_name": "Lee", "Phone": numbers[0], "Email": "a@x.org",
             "Opt In SMS": "yes", "Notes": "choir"},
            {"First Name": "Bo", "last_name": "", "Phone": "(617) 555-" + numbers[1][-4:],
             "Email": "", "Opt In SMS": "no", "Notes": ""},
            {"First Name": "Cy", "last_name": "Ng", "Phone": numbers[2], "Email": "",
             "Opt In SMS": "", "Notes": ""},
        ]
    )  # fmt: skip

    response = await post_csv(client, church_a.headers, "\ufeff" + text)  # Excel's BOM

    assert response.status_code == 200, await response.get_data(as_text=True)
    result = await response.get_json()
    assert result == {
        **result,
        "rows": 3,
        "created": 3,
        "updated": 0,
        "unchanged": 0,
        "ignoredColumns": ["Notes"],
    }
    stored = {
        m.phone: m for m in await Member.filter(church_id=church_a.church_id, phone__in=numbers)
    }
    assert (stored[numbers[0]].first_name, stored[numbers[0]].last_name) == ("Ann", "Lee")
    assert stored[numbers[0]].email == "a@x.org"
    assert stored[numbers[1]].phone == numbers[1]  # national number, default region US
    assert [stored[n].opt_in_sms for n in numbers] == [True, False, True]
    events = await ConsentEvent.filter(member_id=stored[numbers[1]].id)
    assert [(e.opted_in, str(e.source), e.reference) for e in events] == [
        (False, "import", result["importId"])
    ]
    assert str(events[0].changed_by_id) == church_a.user_id
    listing = await (await client.get("/api/members", headers=church_a.headers)).get_json()
    assert listing["pagination"]["total"] == 3  # the cached list is refreshed too


async def test_importing_the_same_file_again_duplicates_nobody(client, church_a):
    text = csv_text(people(phones(5)))
    first = await (await post_csv(client, church_a.headers, text)).get_json()
    again = await post_csv(client, church_a.headers, text)

    assert (first["created"], first["unchanged"]) == (5, 0)
    assert again.status_code == 200
    assert (await again.get_json())["created"] == 0
    assert (await again.get_json())["unchanged"] == 5
    assert await count(church_a.church_id) == 5


async def test_reimport_updates_what_changed_and_keeps_what_is_blank(client, church_a):
    numbers = phones(2)
    await post_csv(
        client,
        church_a.headers,
        csv_text(
            [
                {"firstName": "Ann", "lastName": "Lee", "phone": numbers[0], "email": "a@x.org"},
                {"firstName": "Bo", "lastName": "Ng", "phone": numbers[1], "email": "b@x.org"},
            ]
        ),
    )

    response = await post_csv(
        client,
        church_a.headers,
        csv_text(
            [
                {"firstName": "Anne", "lastName": "", "phone": numbers[0], "email": ""},
                {"firstName": "Bo", "lastName": "Ng", "phone": numbers[1], "email": "b@x.org"},
            ]
        ),
    )

    assert (await response.get_json())["updated"] == 1
    assert (await response.get_json())["unchanged"] == 1
    ann = await Member.get(church_id=church_a.church_id, phone=numbers[0])
    assert (ann.first_name, ann.last_name, ann.email) == ("Anne", "Lee", "a@x.org")


async def test_an_import_opts_out_but_never_opts_back_in(client, church_a):
    numbers = phones(2)
    await post_csv(client, church_a.headers, csv_text(people(numbers)))
    stopped = await Member.get(church_id=church_a.church_id, phone=numbers[1])
    await client.patch(
        f"/api/members/{stopped.id}", json={"optInSms": False}, headers=church_a.headers
    )

    response = await post_csv(
        client,
        church_a.headers,
        csv_text(
            [
                {"firstName": "Person0", "phone": numbers[0], "optInSms": "false"},
                {"firstName": "Person1", "phone": numbers[1], "optInSms": "true"},
            ]
        ),
    )

    assert (await response.get_json())["optedOut"] == 1
    opted = dict(
        await Member.filter(church_id=church_a.church_id).values_list("phone", "opt_in_sms")
    )
    assert opted == {numbers[0]: False, numbers[1]: False}
    history = await (
        await client.get(f"/api/members/{stopped.id}/consent", headers=church_a.headers)
    ).get_json()
    assert [e["source"] for e in history["data"]] == ["import", "staff"]


async def test_multipart_upload_and_json_import_work_alike(client, church_a):
    numbers = phones(4)
    upload = await client.post(
        IMPORT,
        files={
            "file": _file_storage(csv_text(people(numbers[:2])).encode(), "members.csv"),
        },
        headers=church_a.headers,
    )
    assert upload.status_code == 200, await upload.get_data(as_text=True)
    assert (await upload.get_json())["created"] == 2

    as_json = await client.post(
        IMPORT,
        json={
            "members": [
                {"firstName": "Jo", "phone": numbers[2], "optInSms": False},
                {"firstName": "Al", "phone": numbers[3], "email": None, "ignored": 1},
                {"firstName": "Renamed", "phone": numbers[0]},
            ]
        },
        headers=church_a.headers,
    )
    assert as_json.status_code == 200, await as_json.get_data(as_text=True)
    assert (await as_json.get_json())["created"] == 2
    assert (await as_json.get_json())["updated"] == 1
    assert await count(church_a.church_id) == 4


def _file_storage(data: bytes, filename: str):
    from werkzeug.datastructures import FileStorage

    return FileStorage(io.BytesIO(data), filename=filename, content_type="text/csv")


async def test_bad_rows_are_all_reported_and_nothing_is_imported(client, church_a, monkeypatch):
    # Small batches: the good rows before the bad ones are written, then rolled back.
    monkeypatch.setattr(member_import, "BATCH_SIZE", 2)
    numbers = phones(6)
    rows = [
        *people(numbers[:4]),
        {"firstName": "", "phone": numbers[4]},
        {"firstName": "Bad", "phone": "12"},
        {"firstName": "Mail", "phone": numbers[5], "email": "not-an-email"},
        {"firstName": "Flag", "phone": "+16175550999", "optInSms": "maybe"},
        {"firstName": "Twice", "phone": numbers[0]},
    ]
    header = ["firstName", "phone", "email", "optInSms"]

    response = await post_csv(client, church_a.headers, csv_text(rows, header))

    assert response.status_code == 422
    error = (await response.get_json())["error"]
    assert error["code"] == "import_rejected"
    assert "nothing was imported" in error["message"]
    assert error["details"]["errorCount"] == 5
    found = [(e["row"], e["field"]) for e in error["details"]["errors"]]
    assert found == [(6, "firstName"), (7, "phone"), (8, "email"), (9, "optInSms"), (10, "phone")]
    assert "row 2" in error["details"]["errors"][-1]["message"]
    assert await count(church_a.church_id) == 0
    assert not await ConsentEvent.filter(church_id=church_a.church_id).exists()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"firstName,phone\r\nAnn,+16175550100\r\n\xff\xfe,bad\r\n", 400, "not UTF-8"),
        (b'firstName,phone\r\nAnn,+16175550100\r\n"Bo,+1617\r\n', 400, "not valid CSV"),
        (b"firstName,email\r\nAnn,a@x.org\r\n", 422, "no phone column"),
        (b"", 422, "no header row"),
        (b"firstName,phone\r\n\r\n", 422, "no rows"),
    ],
    ids=["not-utf8", "unclosed-quote", "no-phone-column", "empty", "header-only"],
)
async def test_an_unreadable_file_changes_nothing(client, church_a, body, status, says):
    response = await post_csv(client, church_a.headers, body)
    assert response.status_code == status, await response.get_data(as_text=True)
    assert says in (await response.get_json())["error"]["message"]
    assert await count(church_a.church_id) == 0


async def test_more_rows_than_allowed_are_refused_whole(client, church_a, monkeypatch):
    monkeypatch.setattr(member_import, "MAX_ROWS", 3)
    response = await post_csv(client, church_a.headers, csv_text(people(phones(4))))
    assert response.status_code == 413
    assert (await response.get_json())["error"]["code"] == "import_too_large"
    assert await count(church_a.church_id) == 0


async def test_other_content_types_are_refused_with_what_to_send(client, church_a):
    response = await client.post(
        IMPORT, data=b"<members/>", headers={**church_a.headers, "Content-Type": "text/xml"}
    )
    assert response.status_code == 415
    assert "text/csv" in (await response.get_json())["error"]["message"]
    no_file = await client.post(
        IMPORT,
        files={"upload": _file_storage(b"firstName,phone\r\n", "members.csv")},
        headers=church_a.headers,
    )
    assert no_file.status_code == 400
    assert "'file'" in (await no_file.get_json())["error"]["message"]


async def test_the_same_phone_in_two_churches_is_two_members(client, church_a, church_b):
    text = csv_text(people(phones(1)))
    await post_csv(client, church_a.headers, text)
    response = await post_csv(client, church_b.headers, text)
    assert (await response.get_json())["created"] == 1
    assert await count(church_a.church_id) == await count(church_b.church_id) == 1


async def test_only_the_import_route_accepts_bodies_above_the_usual_limit(
    client, church_a, settings
):
    text = csv_text(people(phones(2000), lastName="Featherstonehaugh"))
    assert len(text) > settings.max_body_bytes  # 64 KiB in the tests

    response = await post_csv(client, church_a.headers, text)

    assert response.status_code == 200, await response.get_data(as_text=True)
    assert (await response.get_json())["created"] == 2000
    elsewhere = await client.post(
        "/api/members",
        data=text.encode(),
        headers={**church_a.headers, "Content-Type": "application/json"},
    )
    assert elsewhere.status_code == 413


async def test_an_import_above_its_own_limit_is_refused(app, client, church_a, monkeypatch):
    # The running app with a 10 kB import limit: its request class and its settings.
    monkeypatch.setitem(app.request_class.body_limits, IMPORT_PATH, 10_000)
    state = get_state(app)
    monkeypatch.setattr(
        state, "settings", state.settings.model_copy(update={"member_import_max_bytes": 10_000})
    )
    text = csv_text(people(phones(600)))
    assert len(text) > 10_000

    declared = await post_csv(client, church_a.headers, text)
    assert declared.status_code == 413

    # Sent without Content-Length (chunked): measured as it arrives.
    chunked = await client.post(
        IMPORT,
        data=text.encode(),
        headers={**church_a.headers, "Content-Type": "text/csv", "Transfer-Encoding": "chunked"},
    )
    assert chunked.status_code == 413
    assert await count(church_a.church_id) == 0


async def test_the_import_documents_its_three_body_forms_and_columns(client):
    document = await (await client.get("/openapi.json")).get_json()
    operation = document["paths"][IMPORT]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv", "multipart/form-data"}
    assert operation["requestBody"]["required"] is True
    assert "| `phone` | yes |" in content["text/csv"]["schema"]["description"]
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert "All or nothing" in operation["description"]
    assert "200" in operation["responses"]
