#!/usr/bin/env python3
"""An agency's client of the blangko.v1 contract, in Python (grpcio).

The flow:
  1. GetServerInfo (open, no token).
  2. With the agency token: ListStock across offices (paginated, with days of cover),
     ListLedgerEntries of one office (paginated), VerifyLedger against the published head hash.
  3. With a counter token of one office: Reserve for an applicant (a valid NIK made up here),
     then CancelReservation.
  4. A deliberately bad Reserve (impossible birth date in the NIK, no reason): INVALID_ARGUMENT,
     whose google.rpc.Status (trailer grpc-status-details-bin) is decoded into its
     google.rpc.BadRequest field violations.
  5. The agency token on a counter RPC: PERMISSION_DENIED; no token at all: UNAUTHENTICATED.

Configuration (environment, so tokens never appear in a process list):
  BLANGKO_TARGET          host:port of the server (default 127.0.0.1:50051)
  BLANGKO_AGENCY_TOKEN    bearer token of an `agency` principal (required)
  BLANGKO_COUNTER_TOKEN   bearer token of a `counter` principal of BLANGKO_OFFICE (required)
  BLANGKO_OFFICE          the counter's office (default 3275, Kota Bekasi in the --demo data)
  BLANGKO_SERVICE_POINT   the counter's service point (default mpp)
  BLANGKO_COUNTER_ID      the counter's id (default loket-py)

The code generated from proto/ must be importable (run.sh generates it into gen/).
Exit status: 0 when every check passed, 1 otherwise. NIKs are printed masked only.
"""

import datetime
import os
import random
import sys
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402

from blangko.v1 import common_pb2  # noqa: E402
from blangko.v1 import counter_service_pb2 as counter_pb2  # noqa: E402
from blangko.v1 import counter_service_pb2_grpc as counter_grpc  # noqa: E402
from blangko.v1 import stock_service_pb2 as stock_pb2  # noqa: E402
from blangko.v1 import stock_service_pb2_grpc as stock_grpc  # noqa: E402

TIMEOUT_SECS = 10.0

# The rich error details the server may attach, by type URL.
DETAIL_TYPES = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.LocalizedMessage,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.QuotaFailure,
        error_details_pb2.Help,
        error_details_pb2.DebugInfo,
        error_details_pb2.RequestInfo,
    )
}


class CheckFailed(Exception):
    pass


class Checks:
    def __init__(self):
        self.passed = 0

    def check(self, condition, what):
        if not condition:
            raise CheckFailed(what)
        self.passed += 1
        print(f"  ok: {what}")


CHECKS = Checks()
check = CHECKS.check


# --- NIKs ------------------------------------------------------------------------------------
# Layout PP RR DD DDMMYY SSSS: province, regency/city, district, birth date (day + 40 for
# women), serial (never 0000). The server checks the province code, the birth date and the
# serial; regency and district are not checked (see domain/src/nik.rs).


def make_nik(office_id, rng):
    """A valid NIK registered in office_id's region, with a random birth date, sex and serial."""
    district = "01"
    born = datetime.date(1950, 1, 1) + datetime.timedelta(days=rng.randrange(0, 365 * 55))
    day = born.day + (40 if rng.random() < 0.5 else 0)
    serial = rng.randrange(1, 10000)
    return f"{office_id}{district}{day:02d}{born.month:02d}{born.year % 100:02d}{serial:04d}"


def mask_nik(nik):
    """The project's masked form: region (6 digits) and serial kept, birth date hidden."""
    if len(nik) == 16 and nik.isdigit():
        return f"{nik[:6]}******{nik[12:]}"
    return "*" * 16


# --- errors ------------------------------------------------------------------------------------


def decode_details(err):
    """The google.rpc.Status carried by a failed call (trailer grpc-status-details-bin), and its
    details unpacked into their google.rpc types. (None, []) when the server sent none."""
    status = rpc_status.from_call(err)
    if status is None:
        return None, []
    details = []
    for any_detail in status.details:
        name = any_detail.TypeName()
        cls = DETAIL_TYPES.get(name)
        if cls is None:
            details.append((name, None))
            continue
        message = cls()
        any_detail.Unpack(message)
        details.append((name, message))
    return status, details


def print_error(err):
    print(f"  -> {err.code().name}: {err.details()}")
    status, details = decode_details(err)
    if status is None:
        print("     (no rich error details)")
    for name, message in details:
        if isinstance(message, error_details_pb2.BadRequest):
            for v in message.field_violations:
                print(f"     BadRequest field violation: field={v.field!r} reason={v.description!r}")
                if v.localized_message.message:
                    print(f"       [{v.localized_message.locale}]: {v.localized_message.message}")
        elif isinstance(message, error_details_pb2.ErrorInfo):
            print(f"     ErrorInfo: reason={message.reason} domain={message.domain}")
        elif isinstance(message, error_details_pb2.ResourceInfo):
            print(f"     ResourceInfo: {message.resource_type} {message.resource_name!r}")
        elif isinstance(message, error_details_pb2.RetryInfo):
            delay = message.retry_delay.ToTimedelta().total_seconds()
            print(f"     RetryInfo: retry after {delay} s (with the same request_id)")
        elif isinstance(message, error_details_pb2.LocalizedMessage):
            print(f"     LocalizedMessage [{message.locale}]: {message.message}")
        else:
            print(f"     {name}")
    return status, details


# A mutating call that got no answer (UNAVAILABLE: a replica restarting or shedding load;
# DEADLINE_EXCEEDED: the answer may have been lost) is sent again, the same request with the same
# request_id: the server answers a repeat with its first answer, so nothing is done twice.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
MAX_ATTEMPTS = 4
FIRST_BACKOFF_SECS = 0.2
MAX_BACKOFF_SECS = 5.0


def send_with_retries(call, request, metadata, first_timeout=TIMEOUT_SECS):
    """Sends `request` with `call`, again after UNAVAILABLE or DEADLINE_EXCEEDED (at most
    MAX_ATTEMPTS tries in all), waiting as the server's RetryInfo says, or backing off."""
    backoff = FIRST_BACKOFF_SECS
    timeout = first_timeout
    for attempt in range(1, MAX_ATTEMPTS + 1):
        started = time.monotonic()
        try:
            return call(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as err:
            # grpcio may report a deadline that passed while the call was still being set up as
            # CANCELLED ("Timeout expired"); this client never cancels, so a CANCELLED once its
            # own deadline has passed is that deadline.
            deadline_passed = (
                err.code() == grpc.StatusCode.CANCELLED
                and time.monotonic() - started >= timeout
            )
            if (err.code() not in RETRYABLE and not deadline_passed) or attempt == MAX_ATTEMPTS:
                raise
            _, details = decode_details(err)
            wait = next(
                (
                    m.retry_delay.ToTimedelta().total_seconds()
                    for _, m in details
                    if isinstance(m, error_details_pb2.RetryInfo)
                ),
                backoff,
            )
            wait = min(max(wait, 0.0), MAX_BACKOFF_SECS)
            print(
                f"  {err.code().name} on attempt {attempt}: the same request "
                f"({request.request_id}) again in {wait:.1f} s"
            )
            time.sleep(wait)
            backoff = min(backoff * 2, MAX_BACKOFF_SECS)
            timeout = TIMEOUT_SECS
    raise AssertionError("unreachable")


def expect_error(code, call, *args, **kwargs):
    """Runs call and returns the grpc.RpcError it must fail with (with the given code)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        print_error(err)
        check(err.code() == code, f"failed with {code.name} (got {err.code().name})")
        return err
    raise CheckFailed(f"expected {code.name}, the call succeeded")


# --- the flow ------------------------------------------------------------------------------------


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def days_of_cover(s):
    return f"{s.days_of_cover:.1f} service days" if s.has_days_of_cover else "n/a (no use yet)"


def agency_reads(stock, agency, office_id):
    print("\n== Agency: ListStock across offices (page by page) ==")
    stocks, token, pages = [], "", 0
    while True:
        page = stock.ListStock(
            stock_pb2.ListStockRequest(page_size=2, page_token=token),
            metadata=agency,
            timeout=TIMEOUT_SECS,
        )
        pages += 1
        stocks.extend(page.stocks)
        token = page.next_page_token
        if not token or pages > 1000:
            break
    for s in stocks:
        print(
            f"  {s.office_id} {s.office_name:<22} on hand {s.on_hand:>5}  held {s.held:>3}  "
            f"available {s.available:>5}  today {s.today_used}/{s.today_quota}  "
            f"mean use {s.mean_daily_use:.1f}/day  cover {days_of_cover(s)}"
            f"{'  SUPPLY OVERDUE' if s.supply_overdue else ''}"
        )
    ids = [s.office_id for s in stocks]
    check(ids == sorted(ids), f"ListStock ordered by office_id over {pages} page(s)")
    check(office_id in ids, f"office {office_id} is listed")
    ours = next(s for s in stocks if s.office_id == office_id)
    check(ours.available == ours.on_hand - ours.held, "available = on_hand - held")
    check(len(ours.ledger_head_hash) == 64, "the office publishes a 64-hex ledger head hash")

    print(f"\n== Agency: ListLedgerEntries of {office_id} (oldest first) ==")
    entries, token = [], ""
    while True:
        page = stock.ListLedgerEntries(
            stock_pb2.ListLedgerEntriesRequest(office_id=office_id, page_size=50, page_token=token),
            metadata=agency,
            timeout=TIMEOUT_SECS,
        )
        entries.extend(page.entries)
        token = page.next_page_token
        if not token or not page.entries:
            break
    for e in entries[-8:]:
        kind = common_pb2.LedgerEntryKind.Name(e.kind).removeprefix("LEDGER_ENTRY_KIND_")
        print(
            f"  #{e.sequence:<4} {kind:<14} on_hand {e.on_hand_delta:+5} -> {e.on_hand_after:<5} "
            f"held {e.held_delta:+3} -> {e.held_after:<3} by {e.principal} "
            f"{e.reference or e.service_point_id} {e.masked_nik}"
        )
    print(f"  ({len(entries)} entries)")
    check(len(entries) > 0, "the ledger has entries")
    check(
        [e.sequence for e in entries] == list(range(1, len(entries) + 1)),
        "sequences run from 1 without gaps",
    )
    check(
        all(b.previous_hash == a.hash for a, b in zip(entries, entries[1:])),
        "each entry links to the previous entry's hash",
    )

    print(f"\n== Agency: VerifyLedger of {office_id} against its published head hash ==")
    verified = stock.VerifyLedger(
        stock_pb2.VerifyLedgerRequest(office_id=office_id, published_head_hash=ours.ledger_head_hash),
        metadata=agency,
        timeout=TIMEOUT_SECS,
    )
    for c in verified.chains:
        print(
            f"  {c.office_id}: intact={c.intact} entries={c.entries_checked} "
            f"head=#{c.head_sequence} {c.head_hash[:16]}… {c.problem}"
        )
    check(verified.intact, "the ledger chain is intact")


def counter_flow(counter, counter_md, office_id, service_point, counter_id, nik):
    print(f"\n== Counter: Reserve at {office_id}/{service_point} for NIK {mask_nik(nik)} ==")
    request = counter_pb2.ReserveRequest(
        request_id=f"py-{uuid.uuid4()}",
        office_id=office_id,
        service_point_id=service_point,
        counter_id=counter_id,
        nik=nik,
        reason=common_pb2.REASON_NEW_RECORDING,
        ikd_status=common_pb2.IKD_STATUS_NOT_ACTIVE,
    )
    # The first attempt gets a deadline too short on purpose, as when an answer is lost on the
    # way: the retry, the same request, gets the one reservation.
    print("  first attempt with a 1 ms deadline (as if its answer were lost):")
    reserved = send_with_retries(counter.Reserve, request, counter_md, first_timeout=0.001)
    q = reserved.quota
    print(
        f"  quota {q.local_date}: {q.held} held + {q.committed} committed of {q.quota}, "
        f"{q.remaining} remaining; office available {q.available}"
    )
    outcome = reserved.WhichOneof("outcome")
    if outcome == "ikd_referral":
        r = reserved.ikd_referral
        print(f"  referred to IKD: {common_pb2.ReferralCause.Name(r.cause)}: {r.message_english}")
    check(outcome == "reservation", "Reserve answered with a reservation (not an IKD referral)")
    res = reserved.reservation
    expires = res.expires_at.ToDatetime(tzinfo=datetime.timezone.utc)
    print(
        f"  reservation {res.reservation_id} {common_pb2.ReservationState.Name(res.state)} "
        f"for {res.masked_nik} until {expires:%H:%M:%S} UTC"
    )
    check(res.reservation_id != "", "the reservation id came back")
    check(res.state == common_pb2.RESERVATION_STATE_HELD, "the reservation is HELD")
    check(res.masked_nik == mask_nik(nik), "the server returns the NIK masked, never in clear")
    # with_call also returns the answer's metadata: x-server-time-ms is the server's clock, which
    # expires_at counts against (a counter PC's own clock may be minutes or hours off).
    again, rpc = send_with_retries(counter.Reserve.with_call, request, counter_md)
    print(f"  the same request once more: {again.reservation.reservation_id}, replayed={again.reservation.replayed}")
    check(
        again.reservation.reservation_id == res.reservation_id and again.reservation.replayed,
        "the same request again gets the same reservation, marked replayed (never a second blank)",
    )
    server_times = [v for k, v in rpc.initial_metadata() if k == "x-server-time-ms"]
    check(len(server_times) == 1, "the answer carries the server's clock (x-server-time-ms)")
    left = again.reservation.expires_at.seconds - int(server_times[0]) // 1000
    hold = again.reservation.expires_at.seconds - again.reservation.created_at.seconds
    print(f"  time left on the hold by the server's clock: {left} s of {hold} s")
    check(
        left > 0 and hold - left <= 120,
        "the hold's time left, counted by the server's clock, is what is left of the hold "
        "(not this machine's clock)",
    )

    print(f"\n== Counter: CancelReservation {res.reservation_id} ==")
    cancelled = send_with_retries(
        counter.CancelReservation,
        counter_pb2.CancelReservationRequest(
            request_id=f"py-{uuid.uuid4()}",
            reservation_id=res.reservation_id,
            note="example client: applicant left",
        ),
        counter_md,
    )
    c = cancelled.reservation
    print(f"  reservation {c.reservation_id} {common_pb2.ReservationState.Name(c.state)}")
    check(c.reservation_id == res.reservation_id, "the cancel names the same reservation")
    check(c.state == common_pb2.RESERVATION_STATE_CANCELLED, "the reservation is CANCELLED")


def error_flow(counter, stock, counter_md, agency, office_id, service_point, counter_id, nik):
    # Day 32 is no real birth date (and 72 none for a woman): the NIK is rejected.
    bad_nik = nik[:6] + "32" + nik[8:]
    print(f"\n== Counter: a bad Reserve (NIK {mask_nik(bad_nik)} with day 32, no reason) ==")
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        counter.Reserve,
        counter_pb2.ReserveRequest(
            request_id=f"py-{uuid.uuid4()}",
            office_id=office_id,
            service_point_id=service_point,
            counter_id=counter_id,
            nik=bad_nik,
            reason=common_pb2.REASON_UNSPECIFIED,
        ),
        metadata=counter_md,
        timeout=TIMEOUT_SECS,
    )
    status, details = decode_details(err)
    check(status is not None, "the error carries a google.rpc.Status (grpc-status-details-bin)")
    check(status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], "google.rpc.Status has the same code")
    violations = [v for _, m in details if isinstance(m, error_details_pb2.BadRequest) for v in m.field_violations]
    fields = {v.field for v in violations}
    check("nik" in fields, "a BadRequest field violation names the field 'nik'")
    check("reason" in fields, "another one names the field 'reason' (every bad field is named)")
    check(
        all(bad_nik not in v.description for v in violations) and bad_nik not in err.details(),
        "the error never echoes the NIK",
    )
    localized = [m for _, m in details if isinstance(m, error_details_pb2.LocalizedMessage)]
    check(
        len(localized) == 1 and localized[0].locale == "id-ID" and localized[0].message.startswith("permintaan tidak sah"),
        "a google.rpc.LocalizedMessage says it in Bahasa Indonesia (locale id-ID)",
    )
    check(
        all(v.localized_message.locale == "id-ID" and v.localized_message.message for v in violations),
        "each field violation says why in Bahasa Indonesia too (its localized_message)",
    )

    print("\n== Counter: a listing with 40 bad request ids (the error stays small enough to read) ==")
    # Each id holds a zero-width space, refused with one of the longest reasons there is: the
    # server lists the first ones and counts the rest, so the error fits the 8 KiB of headers
    # that gRPC's C core (this client) reads.
    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        counter.ListReservations,
        counter_pb2.ListReservationsRequest(
            office_id=office_id,
            service_point_id=service_point,
            request_ids=[f"py-{i}\u200b" for i in range(40)],
        ),
        metadata=counter_md,
        timeout=TIMEOUT_SECS,
    )
    _, details = decode_details(err)
    listed = [v for _, m in details if isinstance(m, error_details_pb2.BadRequest) for v in m.field_violations]
    check(
        0 < len(listed) < 40 and "more violations, not listed" in listed[-1].description,
        f"the first {len(listed)} bad ids are listed and the last says how many more there were",
    )

    err = expect_error(
        grpc.StatusCode.NOT_FOUND,
        counter.CancelReservation,
        counter_pb2.CancelReservationRequest(request_id=f"py-{uuid.uuid4()}", reservation_id="no-such-reservation"),
        metadata=counter_md,
        timeout=TIMEOUT_SECS,
    )
    _, details = decode_details(err)
    check(
        any(isinstance(m, error_details_pb2.ResourceInfo) for _, m in details),
        "NOT_FOUND carries a google.rpc.ResourceInfo",
    )

    print("\n== Agency token on a counter RPC (agencies read, they do not reserve) ==")
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        counter.Reserve,
        counter_pb2.ReserveRequest(
            request_id=f"py-{uuid.uuid4()}",
            office_id=office_id,
            service_point_id=service_point,
            counter_id=counter_id,
            nik=nik,
            reason=common_pb2.REASON_NEW_RECORDING,
        ),
        metadata=agency,
        timeout=TIMEOUT_SECS,
    )

    print("\n== No token at all ==")
    expect_error(
        grpc.StatusCode.UNAUTHENTICATED,
        stock.ListStock,
        stock_pb2.ListStockRequest(),
        timeout=TIMEOUT_SECS,
    )


def main():
    target = os.environ.get("BLANGKO_TARGET", "127.0.0.1:50051")
    agency_token = os.environ.get("BLANGKO_AGENCY_TOKEN", "")
    counter_token = os.environ.get("BLANGKO_COUNTER_TOKEN", "")
    office_id = os.environ.get("BLANGKO_OFFICE", "3275")
    service_point = os.environ.get("BLANGKO_SERVICE_POINT", "mpp")
    counter_id = os.environ.get("BLANGKO_COUNTER_ID", "loket-py")
    if not agency_token or not counter_token:
        print("set BLANGKO_AGENCY_TOKEN and BLANGKO_COUNTER_TOKEN", file=sys.stderr)
        return 2

    nik = make_nik(office_id, random.Random())
    print(f"python example: grpcio {grpc.__version__}, server {target}")
    with grpc.insecure_channel(target) as channel:
        stock = stock_grpc.StockServiceStub(channel)
        counter = counter_grpc.CounterServiceStub(channel)
        agency, counter_md = bearer(agency_token), bearer(counter_token)
        try:
            info = stock.GetServerInfo(stock_pb2.GetServerInfoRequest(), timeout=TIMEOUT_SECS)
            print(f"server {info.version} ({info.database_kind}), API {info.api_version}, up {info.uptime_secs} s")
            check(info.api_version == "blangko.v1", "the server speaks blangko.v1")
            agency_reads(stock, agency, office_id)
            counter_flow(counter, counter_md, office_id, service_point, counter_id, nik)
            error_flow(counter, stock, counter_md, agency, office_id, service_point, counter_id, nik)
        except CheckFailed as failure:
            print(f"\nFAILED: {failure}", file=sys.stderr)
            print(f"python example: {CHECKS.passed} passed, 1 failed")
            return 1
        except grpc.RpcError as err:
            print(f"\nFAILED: unexpected RPC error {err.code().name}: {err.details()}", file=sys.stderr)
            print_error(err)
            print(f"python example: {CHECKS.passed} passed, 1 failed")
            return 1
        except Exception:  # e.g. a field the generated code no longer has after a contract change
            traceback.print_exc()
            print(f"python example: {CHECKS.passed} passed, 1 failed")
            return 1
    print(f"\npython example: {CHECKS.passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
