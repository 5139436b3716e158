"""Synthetic CDRs that look like real carrier traffic, generated inside ClickHouse.

Used by `cdrhouse demo`, the benchmarks and tests. Rows are computed by one
SELECT over `numbers()`: every random choice is a hash of (seed, row number,
purpose), so the same seed and end date give the same calls, and millions of
rows take seconds rather than a Python loop per row.

What makes it realistic enough to measure on:
- several tenants with skewed sizes, customers and carriers with skewed
  traffic (a few accounts carry most calls), as on a real wholesale switch;
- E.164 destinations over real country codes with plausible national
  lengths, a per-tenant pool of numbers so that a number recurs;
- answer ratio around 60 %, talk times with a long tail, SIP codes, Q.850
  release reasons and post-dial delays that agree with the disposition;
- a day/night curve, per-country rates with a carrier margin, a few
  recording URLs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq

from cdrhouse.engine import accounts as acc
from cdrhouse.engine.db import Database

# (ISO country, country code, national digits, weight, customer rate per minute)
COUNTRIES: tuple[tuple[str, str, int, int, str], ...] = (
    ("US", "1", 10, 30, "0.0060"), ("GB", "44", 10, 12, "0.0120"),
    ("DE", "49", 11, 9, "0.0150"), ("FR", "33", 9, 7, "0.0180"),
    ("IN", "91", 10, 8, "0.0090"), ("MX", "52", 10, 6, "0.0140"),
    ("BR", "55", 11, 5, "0.0210"), ("NG", "234", 10, 3, "0.0950"),
    ("PH", "63", 10, 4, "0.1100"), ("PK", "92", 10, 3, "0.0780"),
    ("ES", "34", 9, 4, "0.0160"), ("IT", "39", 10, 3, "0.0170"),
    ("AU", "61", 9, 2, "0.0320"), ("CN", "86", 11, 2, "0.0230"),
    ("ZA", "27", 9, 1, "0.0650"), ("CU", "53", 8, 1, "0.6500"),
)

CUSTOMER_NAMES = ("Northwind Telecom", "Blue Harbor VoIP", "Cedar Lines", "Orbit Calls",
                  "Kestrel Networks", "Lumen Dialer", "Pinecrest Comms", "Atlas Contact",
                  "Meridian Voice", "Harbor Point", "Silverline CC", "Tundra Connect")
CARRIER_NAMES = ("Transit One", "Globe Route", "Premium Path", "Apex Wholesale",
                 "Delta Termination", "Sigma Voice", "Ocean Gateway", "Vertex Carrier")


@dataclass(frozen=True)
class GenSpec:
    rows: int = 200_000
    months: int = 6
    seed: int = 42
    tenants: tuple[str, ...] = ("acme", "globex", "initech")
    customers_per_tenant: int = 12
    carriers_per_tenant: int = 6
    end: dt.datetime | None = None  #: last instant covered; default now (UTC)

    @property
    def end_time(self) -> dt.datetime:
        end = self.end or dt.datetime.now(dt.timezone.utc)
        return end.astimezone(dt.timezone.utc).replace(microsecond=0)

    @property
    def start_time(self) -> dt.datetime:
        return self.end_time - dt.timedelta(days=round(30.44 * self.months))


def account_code(kind: str, i: int) -> str:
    return f"{'C' if kind == 'customer' else 'K'}{i:03d}"


def ensure_accounts(db: Database, spec: GenSpec) -> int:
    """Create the generator's customers and carriers where missing; returns how many were new."""
    new = 0
    for tenant in spec.tenants:
        existing = {(a.kind, a.code) for a in acc.list_accounts(db, tenant)}
        for kind, count, names in (("customer", spec.customers_per_tenant, CUSTOMER_NAMES),
                                   ("carrier", spec.carriers_per_tenant, CARRIER_NAMES)):
            for i in range(1, count + 1):
                code = account_code(kind, i)
                if (kind, code) not in existing:
                    name = f"{names[(i - 1) % len(names)]}" + (f" {i}" if i > len(names) else "")
                    acc.add_account(db, tenant, code, kind, name, "EUR" if tenant == "globex" else "USD")
                    new += 1
    return new


def _u(k: int) -> str:
    """A uniform number in [0, 1) from (seed, row, k): deterministic, independent per k."""
    return f"(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, {k}) % 1000000007) / 1000000007.0"


def generator_sql(spec: GenSpec) -> str:
    """SELECT producing one tenant's rows in canonical columns.

    Parameters: seed, t_idx (the tenant's position, so tenants differ), tenant,
    offset and rows (the slice of the tenant's row numbers).
    """
    country_weights = []
    for i, (_iso, _cc, _len, w, _rate) in enumerate(COUNTRIES):
        country_weights += [str(i + 1)] * w
    cw = "[" + ", ".join(country_weights) + "]"
    iso = "[" + ", ".join(f"'{c[0]}'" for c in COUNTRIES) + "]"
    ccode = "[" + ", ".join(f"'{c[1]}'" for c in COUNTRIES) + "]"
    nlen = "[" + ", ".join(str(c[2]) for c in COUNTRIES) + "]"
    rate = "[" + ", ".join(f"toDecimal64('{c[4]}', 6)" for c in COUNTRIES) + "]"
    span = int((spec.end_time - spec.start_time).total_seconds())
    start_epoch = int(spec.start_time.timestamp())
    c_n, k_n = spec.customers_per_tenant, spec.carriers_per_tenant

    return f"""
SELECT
    call_id, start_time, answer_time, end_time, duration, billsec,
    customer_code, carrier_code, direction, disposition, src_number, dst_number,
    dst_prefix, country, release_reason, sip_code, sip_reason, pdd_ms, src_ip, dst_ip, codec,
    customer_rate, customer_charge, carrier_rate, carrier_cost, currency, recording_url
FROM (
SELECT
    {{t_idx:UInt32}} AS t_idx,
    {{tenant:String}} AS tenant_id,
    lower(concat(substring(hex(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, 101)), 1, 8), '-',
                 substring(hex(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, 101)), 9, 4), '-4',
                 substring(hex(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, 102)), 2, 3), '-a',
                 substring(hex(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, 102)), 5, 3), '-',
                 substring(hex(cityHash64({{seed:UInt64}}, {{t_idx:UInt32}}, number, 103)), 1, 12))) AS call_id,
    -- skewed accounts: index = ceil(n * u^2.2), so account 1 carries the most traffic
    toUInt32(greatest(1, ceil({c_n} * pow({_u(2)}, 2.2)))) AS cust_i,
    toUInt32(greatest(1, ceil({k_n} * pow({_u(3)}, 1.6)))) AS carr_i,
    concat('C', leftPad(toString(cust_i), 3, '0')) AS customer_code,
    concat('K', leftPad(toString(carr_i), 3, '0')) AS carrier_code,
    -- the day uniform over the span, the time of day peaking in the afternoon
    toDateTime64({start_epoch} +
        least({span} - 1, toUInt64(floor({_u(4)} * intDiv({span}, 86400))) * 86400
        + toUInt64(86400 * (0.15 + 0.7 * ({_u(5)} + {_u(6)} + {_u(7)}) / 3))), 3, 'UTC')
        + toIntervalMillisecond(toUInt64({_u(8)} * 1000)) AS start_time,
    {cw}[1 + toUInt32(floor({_u(9)} * {len(country_weights)}))] AS c_i,
    {iso}[c_i] AS country,
    {ccode}[c_i] AS cc,
    -- destinations come from a per-tenant pool of 400k numbers, so numbers recur
    toUInt64(pow({_u(10)}, 1.5) * 400000) AS dst_pool,
    concat(cc, leftPad(toString(cityHash64({{seed:UInt64}}, t_idx, c_i, dst_pool) % toUInt64(pow(10, {nlen}[c_i] - 1)) + toUInt64(pow(10, {nlen}[c_i] - 1))), {nlen}[c_i], '0')) AS dst_number,
    substring(dst_number, 1, length(cc) + 2) AS dst_prefix,
    -- each customer sends from its own block of 2000 numbers
    concat('1', toString(2000000000 + cust_i * 100000 + t_idx * 10000000 + toUInt32(floor(pow({_u(11)}, 2) * 2000)))) AS src_number,
    {_u(12)} AS u_disp,
    multiIf(u_disp < 0.58, 'ANSWERED', u_disp < 0.80, 'NO ANSWER', u_disp < 0.88, 'BUSY',
            u_disp < 0.96, 'FAILED', 'CONGESTION') AS disposition,
    {_u(13)} AS u_cause,
    multiIf(disposition = 'ANSWERED', 200, disposition = 'NO ANSWER', if(u_cause < 0.6, 487, 480),
            disposition = 'BUSY', 486, disposition = 'FAILED',
            multiIf(u_cause < 0.5, 404, u_cause < 0.8, 403, 500), 503) AS sip_code,
    multiIf(sip_code = 200, 'OK', sip_code = 487, 'Request Terminated', sip_code = 480,
            'Temporarily Unavailable', sip_code = 486, 'Busy Here', sip_code = 404, 'Not Found',
            sip_code = 403, 'Forbidden', sip_code = 500, 'Server Internal Error',
            'Service Unavailable') AS sip_reason,
    multiIf(sip_code = 200, 'NORMAL_CLEARING', sip_code = 487, 'ORIGINATOR_CANCEL',
            sip_code = 480, 'NO_ANSWER', sip_code = 486, 'USER_BUSY', sip_code = 404,
            'UNALLOCATED_NUMBER', sip_code = 403, 'CALL_REJECTED', sip_code = 500,
            'DESTINATION_OUT_OF_ORDER', 'NORMAL_CIRCUIT_CONGESTION') AS release_reason,
    toUInt32(300 + floor(pow({_u(14)}, 2) * 7000)) AS pdd_ms,
    -- talk time: exponential with a long tail, a few calls over an hour
    toUInt32(if(disposition = 'ANSWERED',
        least(14400, 1 + floor(-log(1 - {_u(15)} * 0.999999) * if({_u(16)} < 0.02, 1800, 150))), 0)) AS billsec,
    toUInt32(ceil(pdd_ms / 1000) + if(disposition = 'ANSWERED', floor({_u(17)} * 20),
        if(disposition = 'NO ANSWER', 10 + floor({_u(17)} * 40), 0))) AS setup_s,
    setup_s + billsec AS duration,
    if(disposition = 'ANSWERED', start_time + toIntervalSecond(setup_s), NULL) AS answer_time,
    start_time + toIntervalSecond(duration) AS end_time,
    multiIf({_u(18)} < 0.90, 'outbound', {_u(18)} < 0.98, 'inbound', 'internal') AS direction,
    concat('203.0.113.', toString(cust_i % 250 + 1)) AS src_ip,
    concat('198.51.', toString(100 + t_idx), '.', toString(carr_i % 250 + 1)) AS dst_ip,
    multiIf({_u(19)} < 0.45, 'PCMA', {_u(19)} < 0.75, 'PCMU', {_u(19)} < 0.92, 'G729', 'OPUS') AS codec,
    -- per-country rate, per-customer discount, carriers paid about 80 %
    {rate}[c_i] * toDecimal64(1 - (cust_i % 5) * 0.04, 6) AS customer_rate,
    {rate}[c_i] * toDecimal64(0.74 + (carr_i % 4) * 0.03, 6) AS carrier_rate,
    toDecimal64(round(toDecimal128(billsec, 6) * customer_rate / 60, 6), 6) AS customer_charge,
    toDecimal64(round(toDecimal128(billsec, 6) * carrier_rate / 60, 6), 6) AS carrier_cost,
    if(tenant_id = 'globex', 'EUR', 'USD') AS currency,
    if(disposition = 'ANSWERED' AND {_u(20)} < 0.1,
       concat('https://recordings.example.com/', tenant_id, '/', call_id, '.wav'), '') AS recording_url
FROM numbers({{offset:UInt64}}, {{rows:UInt64}})
)
"""


def rate_cards(db: Database, spec: GenSpec, effective_from: dt.date = dt.date(2000, 1, 1)
               ) -> dict[tuple[str, str, str], list]:
    """Rate cards that reproduce the generator's charges exactly: {(tenant, kind, code): rates}.

    One rate per country code, 1/1 increments, no connect fee, rounding 6, rate =
    the country's rate times the account's discount (computed by ClickHouse with
    the generator's own expression, so re-rating generated calls changes no money).
    """
    from cdrhouse.engine.ratecards import Rate

    rate = "[" + ", ".join(f"toDecimal64('{c[4]}', 6)" for c in COUNTRIES) + "]"
    start = dt.datetime.combine(effective_from, dt.time(), dt.timezone.utc)
    cards: dict[tuple[str, str, str], list] = {}
    for tenant in spec.tenants:
        currency = "EUR" if tenant == "globex" else "USD"
        for kind, count, factor in (
                ("customer", spec.customers_per_tenant, "toDecimal64(1 - (i % 5) * 0.04, 6)"),
                ("carrier", spec.carriers_per_tenant, "toDecimal64(0.74 + (i % 4) * 0.03, 6)")):
            rows = db.rows(
                f"SELECT i, c, toDecimal64({rate}[c] * {factor}, 6) FROM (SELECT "
                f"toUInt32(a.number + 1) AS i, toUInt32(b.number + 1) AS c FROM numbers({count}) "
                f"AS a CROSS JOIN numbers({len(COUNTRIES)}) AS b) ORDER BY i, c")
            for i, c, r in rows:
                cards.setdefault((tenant, kind, account_code(kind, int(i))), []).append(
                    Rate(COUNTRIES[int(c) - 1][1], r, Decimal(0), 1, 1, 0, start, None,
                         currency, 6))
    return cards


def load_rate_cards(db: Database, spec: GenSpec) -> int:
    """Store `rate_cards(spec)` for the generator's accounts; returns how many rates."""
    from cdrhouse.engine import ratecards

    n = 0
    for (tenant, kind, code), rates in rate_cards(db, spec).items():
        account = acc.find(db, tenant, kind, code)
        if account is not None:
            n += ratecards.store_rates(db, tenant, account, rates)
    return n


def tenant_rows(spec: GenSpec) -> dict[str, int]:
    """How many of `spec.rows` each tenant gets: skewed, the first tenant is the big one."""
    weights = [2 ** (len(spec.tenants) - i) for i in range(len(spec.tenants))]
    shares = [spec.rows * w // sum(weights) for w in weights]
    shares[0] += spec.rows - sum(shares)
    return dict(zip(spec.tenants, shares))


def _params(spec: GenSpec, tenant: str) -> dict:
    return {"seed": spec.seed, "t_idx": spec.tenants.index(tenant) + 1, "tenant": tenant}


def write_parquet(db: Database, spec: GenSpec, tenant: str, path: Path,
                  chunk_rows: int = 1_000_000, progress=None) -> int:
    """Generate one tenant's CDRs into a zstd Parquet file, chunk by chunk (flat memory)."""
    sql = generator_sql(spec)
    rows = tenant_rows(spec)[tenant]
    writer = None
    done = 0
    try:
        while done < rows:
            n = min(chunk_rows, rows - done)
            table = db.arrow(sql, {**_params(spec, tenant), "offset": done, "rows": n})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=256_000)
            done += n
            if progress:
                progress(n)
    finally:
        if writer is not None:
            writer.close()
    return done


def write_csv(db: Database, spec: GenSpec, tenant: str, path: Path) -> int:
    """Generate one tenant's CDRs into a CSV file with a header of catalogue names."""
    sql = generator_sql(spec)
    rows = tenant_rows(spec)[tenant]
    with open(path, "wb") as fh, db.stream(sql, "CSVWithNames",
                                           {**_params(spec, tenant), "offset": 0, "rows": rows}) as chunks:
        for chunk in chunks:
            fh.write(chunk)
    return rows


def load(db: Database, spec: GenSpec, workdir: Path) -> int:
    """Generate `spec` per tenant to Parquet in `workdir` and ingest it through the real
    ingest path (accounts created first); returns the rows accepted. For the
    benchmarks and the tests, which want realistic data stored the way users store it."""
    from cdrhouse.engine.ingest import IngestOptions, ingest_paths  # ingest does not import us

    ensure_accounts(db, spec)
    accepted = 0
    for tenant in spec.tenants:
        path = Path(workdir) / f"{tenant}-{spec.seed}.parquet"
        write_parquet(db, spec, tenant, path)
        reports = ingest_paths(db, [path], IngestOptions(tenant=tenant),
                               Path(workdir) / "rejects.csv")
        accepted += sum(r.accepted for r in reports)
    return accepted
