"""The ingest conversion as SQL: one INSERT … SELECT turns a staged batch into CDRs.

engine.ingest stages a batch of raw values (text as the file wrote it, or
typed Parquet columns) in a scratch table `r_<field>` per column plus the line
number, and runs the statement built here. For every row it computes either
the typed, derived values of every catalogue field or `reason`, the first
thing wrong with the row (parsing, ranges, time zones, unknown accounts,
length caps). Everything is a ClickHouse expression, so a million rows cost one
query whatever the format.

Pure: builds text, touches no database (tests run what it builds on a real
engine through engine.ingest).
"""

from __future__ import annotations

from cdrhouse.sql import catalogue

#: The line-number column every staged and converted batch carries.
LINE = "_line"
_NUMBER_RE = r"'^\\+?[0-9][0-9 ()./-]*$'"


def clean(col: str) -> str:
    # '' and ClickHouse's own NULL spelling in CSV/TSV (\N) both mean "no value"
    return f"nullIf(nullIf(trimBoth(toValidUTF8(toString({col}))), ''), '\\\\N')"


_NUMERIC = ("int", "float", "decimal")


def _datetime(v: str, staged: str | None) -> str:
    if staged == "timestamp":
        return v
    if staged in _NUMERIC:  # a number in a datetime column is a Unix time
        return f"if({v} IS NULL, NULL, toDateTime64({v}, 3, 'UTC'))"
    return f"parseDateTime64BestEffortOrNull({v}, 3, {{source_tz:String}})"


def _uint(v: str, staged: str | None, max_value: int) -> str:
    if staged in _NUMERIC:
        return (f"if({v} IS NULL OR {v} < 0 OR {v} > {max_value}, "
                f"CAST(NULL, 'Nullable(UInt64)'), toUInt64(round({v})))")
    if staged == "timestamp":
        return "CAST(NULL, 'Nullable(UInt64)')"
    f = f"toFloat64OrNull({v})"
    return (f"if({f} IS NULL OR {f} < 0 OR {f} > {max_value} OR NOT isFinite({f}), "
            f"CAST(NULL, 'Nullable(UInt64)'), toUInt64(round({f})))")


def _decimal(v: str, staged: str | None) -> str:
    if staged in ("int", "decimal"):
        return f"toDecimal64({v}, 6)"
    if staged == "float":  # the shortest decimal spelling of the float, not its binary value
        return f"toDecimal64OrNull(toString({v}), 6)"
    if staged == "timestamp":
        return "CAST(NULL, 'Nullable(Decimal(18, 6))')"
    return f"toDecimal64OrNull({v}, 6)"


def conversion_sql(staged: dict[str, str], norm_table: str, stage_table: str) -> str:
    """The INSERT … SELECT that converts one staged batch.

    `staged` maps each column present in the batch to how it was staged:
    'string', 'binary' (bytes that may not be UTF-8), 'int', 'float',
    'decimal' or 'timestamp'. Typed columns (Parquet) skip text parsing.
    Absent fields read as NULL and take their documented default.
    """
    typed_kinds = {f.name for f in catalogue.FIELDS if f.kind in ("int", "decimal", "datetime")}

    def v(name: str) -> str:
        kind = staged.get(name)
        col = f"r_{name}"
        if kind is None:
            return "CAST(NULL, 'Nullable(String)')"
        if kind in _NUMERIC or kind == "timestamp":
            return col if name in typed_kinds else f"nullIf(toString({col}), '')"
        if kind == "string":
            return f"nullIf(nullIf(trimBoth({col}), ''), '\\\\N')"
        return clean(col)

    def parsed_dt(name: str) -> str:
        return _datetime(f"v_{name}", staged.get(name))

    def uint(name: str, max_value: int = 4294967295) -> str:
        return _uint(f"v_{name}", staged.get(name), max_value)

    disp_list = ", ".join(f"'{d}'" for d in catalogue.DISPOSITIONS)
    dir_list = ", ".join(f"'{d}'" for d in catalogue.DIRECTIONS)
    number = ("if(match({0}, " + _NUMBER_RE + "), replaceRegexpAll({0}, '[^0-9]', ''), {0})")

    aliases = [f"{v(n)} AS v_{n}" for n in catalogue.NAMES]
    aliases += [f"{v('customer_code')} AS v_customer_code", f"{v('carrier_code')} AS v_carrier_code"]
    aliases += [
        f"{parsed_dt('start_time')} AS p_start",
        f"{parsed_dt('answer_time')} AS p_answer",
        f"{parsed_dt('end_time')} AS p_end",
        f"{uint('duration')} AS p_duration",
        f"{uint('billsec')} AS p_billsec",
        f"{uint('sip_code', 699)} AS p_sip_code",
        f"{uint('pdd_ms')} AS p_pdd",
        "multiIf(v_disposition IS NULL, NULL, "
        "  upper(replaceRegexpAll(v_disposition, '[_ ]+', ' ')) = 'NOANSWER', 'NO ANSWER', "
        "  upper(replaceRegexpAll(v_disposition, '[_ ]+', ' '))) AS p_disp",
        "lower(v_direction) AS p_dir",
        # accounts: by id, by code, or the --customer/--carrier default
        f"{uint('customer_id')} AS p_cust_num",
        "transform(v_customer_code, {cust_codes:Array(String)}, {cust_ids:Array(UInt32)}, toUInt32(0)) AS p_cust_by_code",
        f"{uint('carrier_id')} AS p_carr_num",
        "transform(v_carrier_code, {carr_codes:Array(String)}, {carr_ids:Array(UInt32)}, toUInt32(0)) AS p_carr_by_code",
        "toUInt32(multiIf(v_customer_code IS NOT NULL, p_cust_by_code, "
        "  p_cust_num IS NOT NULL, p_cust_num, {default_customer:UInt32})) AS d_customer",
        "toUInt32(multiIf(v_carrier_code IS NOT NULL, p_carr_by_code, "
        "  p_carr_num IS NOT NULL, p_carr_num, {default_carrier:UInt32})) AS d_carrier",
        # derived times and durations
        "toUInt32(ifNull(p_duration, greatest(0, dateDiff('second', p_start, p_end)))) AS d_duration",
        "ifNull(p_end, p_start + toIntervalSecond(d_duration)) AS d_end",
        "toUInt32(ifNull(p_billsec, if(p_answer IS NULL, 0, greatest(0, dateDiff('second', p_answer, d_end))))) AS d_billsec",
        "if(p_answer IS NULL AND d_billsec > 0, d_end - toIntervalSecond(d_billsec), p_answer) AS d_answer",
        "ifNull(p_disp, if(d_billsec > 0, 'ANSWERED', 'NO ANSWER')) AS d_disp",
        "ifNull(upper(v_currency), transform(d_customer, {cust_ids:Array(UInt32)}, {cust_currencies:Array(String)}, 'USD')) AS d_currency",
    ]
    for money in ("customer_rate", "customer_charge", "carrier_rate", "carrier_cost"):
        aliases.append(f"{_decimal('v_' + money, staged.get(money))} AS p_{money}")

    checks = [
        ("v_tenant_id IS NOT NULL AND v_tenant_id != {tenant:String}",
         "concat('tenant_id ', toJSONString(v_tenant_id), ' is not the tenant being ingested (', {tenant:String}, ')')"),
        ("v_call_id IS NULL", "'call_id is missing'"),
    ]
    # Text caps (catalogue max_length), checked before anything parses the text.
    for f in catalogue.FIELDS:
        if f.max_length is not None:
            checks.append((f"lengthUTF8(v_{f.name}) > {f.max_length}",
                           f"concat('{f.name} is longer than {f.max_length} characters (', "
                           f"toString(lengthUTF8(v_{f.name})), ')')"))
    checks += [
        ("v_start_time IS NULL", "'start_time is missing'"),
        ("p_start IS NULL", "concat('start_time: cannot read ', toJSONString(toString(v_start_time)))"),
        ("p_start < toDateTime64('1990-01-01', 3, 'UTC') OR p_start > now64(3) + INTERVAL 1 DAY",
         "concat('start_time ', toString(p_start), ' is out of range (1990 to tomorrow)')"),
        ("v_answer_time IS NOT NULL AND p_answer IS NULL",
         "concat('answer_time: cannot read ', toJSONString(toString(v_answer_time)))"),
        ("v_end_time IS NOT NULL AND p_end IS NULL",
         "concat('end_time: cannot read ', toJSONString(toString(v_end_time)))"),
        ("v_duration IS NOT NULL AND p_duration IS NULL",
         "concat('duration: not a number of seconds: ', toJSONString(v_duration))"),
        ("v_duration IS NULL AND v_end_time IS NULL", "'needs duration or end_time'"),
        ("p_end IS NOT NULL AND p_end < p_start", "'end_time is before start_time'"),
        ("v_billsec IS NOT NULL AND p_billsec IS NULL",
         "concat('billsec: not a number of seconds: ', toJSONString(v_billsec))"),
        ("d_billsec > d_duration",
         "concat('billsec ', toString(d_billsec), ' exceeds duration ', toString(d_duration))"),
        ("p_answer IS NOT NULL AND (p_answer < p_start OR p_answer > d_end)",
         "'answer_time is outside start_time..end_time'"),
        (f"p_disp IS NOT NULL AND p_disp NOT IN ({disp_list})",
         f"concat('disposition ', toJSONString(v_disposition), ' is not one of {disp_list.replace(chr(39), '')}')"),
        (f"p_dir IS NOT NULL AND p_dir NOT IN ({dir_list})",
         f"concat('direction ', toJSONString(v_direction), ' is not one of {dir_list.replace(chr(39), '')}')"),
        ("v_customer_code IS NOT NULL AND p_cust_by_code = 0",
         "concat('unknown customer code ', toJSONString(v_customer_code), "
         "' (add it with `cdrhouse accounts add` or ingest with --create-accounts)')"),
        ("v_customer_id IS NOT NULL AND (p_cust_num IS NULL OR NOT has({cust_ids:Array(UInt32)}, toUInt32(p_cust_num)))",
         "concat('unknown customer_id ', toJSONString(v_customer_id))"),
        ("v_customer_id IS NOT NULL AND v_customer_code IS NOT NULL AND p_cust_num != p_cust_by_code",
         "'customer_id and customer_code name different accounts'"),
        ("v_carrier_code IS NOT NULL AND p_carr_by_code = 0",
         "concat('unknown carrier code ', toJSONString(v_carrier_code), "
         "' (add it with `cdrhouse accounts add` or ingest with --create-accounts)')"),
        ("v_carrier_id IS NOT NULL AND (p_carr_num IS NULL OR NOT has({carr_ids:Array(UInt32)}, toUInt32(p_carr_num)))",
         "concat('unknown carrier_id ', toJSONString(v_carrier_id))"),
        ("v_carrier_id IS NOT NULL AND v_carrier_code IS NOT NULL AND p_carr_num != p_carr_by_code",
         "'carrier_id and carrier_code name different accounts'"),
        ("v_sip_code IS NOT NULL AND p_sip_code IS NULL",
         "concat('sip_code: not a SIP response code: ', toJSONString(v_sip_code))"),
        ("v_pdd_ms IS NOT NULL AND p_pdd IS NULL",
         "concat('pdd_ms: not a number of milliseconds: ', toJSONString(v_pdd_ms))"),
        ("v_src_ip IS NOT NULL AND NOT (isIPv4String(v_src_ip) OR isIPv6String(v_src_ip))",
         "concat('src_ip: not an IP address: ', toJSONString(v_src_ip))"),
        ("v_dst_ip IS NOT NULL AND NOT (isIPv4String(v_dst_ip) OR isIPv6String(v_dst_ip))",
         "concat('dst_ip: not an IP address: ', toJSONString(v_dst_ip))"),
        ("NOT match(d_currency, '^[A-Z]{3}$')",
         "concat('currency: not an ISO 4217 code: ', toJSONString(d_currency))"),
    ]
    for money in ("customer_rate", "customer_charge", "carrier_rate", "carrier_cost"):
        checks.append((f"v_{money} IS NOT NULL AND p_{money} IS NULL",
                       f"concat('{money}: not a decimal number: ', toJSONString(v_{money}))"))
    reason = "multiIf(" + ", ".join(f"{c}, {r}" for c, r in checks) + ", '')"

    epoch = "toDateTime64(0, 3, 'UTC')"
    final = {
        "tenant_id": "{tenant:String}",
        "call_id": "ifNull(v_call_id, '')",
        "start_time": f"ifNull(p_start, {epoch})",
        "answer_time": "d_answer",
        "end_time": f"ifNull(d_end, {epoch})",
        "duration": "d_duration",
        "billsec": "if(d_billsec > d_duration, 0, d_billsec)",
        "customer_id": "d_customer",
        "carrier_id": "d_carrier",
        "direction": f"if(p_dir IN ({dir_list}), p_dir, 'outbound')",
        "disposition": f"if(d_disp IN ({disp_list}), d_disp, 'FAILED')",
        "src_number": "ifNull(" + number.format("v_src_number") + ", '')",
        "dst_number": "ifNull(" + number.format("v_dst_number") + ", '')",
        "dst_prefix": "ifNull(v_dst_prefix, '')",
        "country": "upper(ifNull(v_country, ''))",
        "release_reason": "ifNull(v_release_reason, '')",
        "sip_code": "toUInt16(ifNull(p_sip_code, 0))",
        "sip_reason": "ifNull(v_sip_reason, '')",
        "pdd_ms": "toUInt32(ifNull(p_pdd, 0))",
        "src_ip": "ifNull(v_src_ip, '')",
        "dst_ip": "ifNull(v_dst_ip, '')",
        "codec": "ifNull(v_codec, '')",
        "customer_rate": "p_customer_rate",
        "customer_charge": "p_customer_charge",
        "carrier_rate": "p_carrier_rate",
        "carrier_cost": "p_carrier_cost",
        "currency": "if(match(d_currency, '^[A-Z]{3}$'), d_currency, 'USD')",
        "recording_url": "ifNull(v_recording_url, '')",
    }
    assert set(final) == set(catalogue.NAMES), "every catalogue field needs a conversion"
    select = ",\n  ".join(aliases + [f"{final[n]} AS {n}" for n in catalogue.NAMES]
                          + [f"{LINE} AS {LINE}", f"{reason} AS reason"])
    return (f"INSERT INTO {norm_table} ({', '.join(catalogue.NAMES)}, {LINE}, reason)\n"
            f"SELECT {', '.join(catalogue.NAMES)}, {LINE}, reason FROM (\nSELECT\n  {select}\n"
            f"FROM {stage_table})")
