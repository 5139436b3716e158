"""The ClickHouse functions user SQL may call: an allowlist, never a blocklist.

The guard (sql/guard.py) refuses any function whose ClickHouse name is not in
`ALLOWED`, naming it. A blocklist would have to keep up with every ClickHouse
release; an allowlist fails closed: a new or forgotten function is refused
until someone decides it is safe and adds one line here.

Names are the ones ClickHouse knows (as printed by sqlglot's ClickHouse
dialect, which is the SQL that actually runs) and are matched
case-insensitively: ClickHouse has no two functions whose names differ only
by case, so this only lets `COUNT` and `count` both through.

Deliberately NOT allowed, by category (do not add without a design review):

- **Table access by name** — `dictGet*`, `dictHas`, `joinGet*`, `hasColumnInTable`,
  `file` (the scalar that reads a server file), `in`/`globalIn` written as
  functions, `arrayReduce`/`initializeAggregation` (take a function *name*
  as a string, which this list could not check). They read data outside the
  guarded subqueries.
- **Server, session and user introspection** — `currentUser`, `currentDatabase`,
  `currentRoles`, `getSetting`, `getSettingOrDefault`, `version`, `hostName`,
  `fqdn`, `uptime`, `tcpPort`, `getMacro`, `getServerPort`, `serverUUID`,
  `timezone`/`serverTimezone`, `filesystem*`, `shardNum`, `blockSize`,
  `queryID`: they leak deployment details, and other tenants' activity.
- **Side effects and denial of service** — `sleep`, `sleepEachRow`, `throwIf`,
  `runningAccumulate`, `generateRandom*`, `randomString` and friends with sizes
  the user controls, `executable` / user-defined functions, `model*`/`catboost*`
  evaluation: they tie up server threads or run code outside ClickHouse.
- **Anything that takes a column, table or function name as a string** —
  `COLUMNS('regex')`, `getSubcolumn`, `dynamicElement`: names must be
  identifiers so the guard can check them against the field catalogue.

Aggregate functions also accept the combinator suffixes in `COMBINATORS`
(`sumIf`, `uniqExactIf`, `avgState`, `sumMerge`, `countDistinct`, …).
"""

from __future__ import annotations

from typing import Literal

Category = Literal["aggregate", "window", "datetime", "string", "math", "conditional",
                   "conversion", "array", "tuple_map", "ip", "hash", "other"]

#: name → category. Aggregates are the only category combinators apply to.
ALLOWED: dict[str, Category] = {
    # -- aggregates -----------------------------------------------------------------
    **{name: "aggregate" for name in (
        "count", "sum", "avg", "min", "max", "any", "anyLast", "anyHeavy", "any_value",
        "first_value", "last_value", "argMin", "argMax", "uniq", "uniqExact", "uniqCombined",
        "uniqCombined64", "uniqHLL12", "uniqTheta", "approx_count_distinct", "median",
        "medianExact", "quantile", "quantiles", "quantileExact", "quantilesExact",
        "quantileTDigest", "quantilesTDigest", "quantileTiming", "quantileDeterministic",
        "groupArray", "groupUniqArray", "groupArraySample", "groupArraySorted",
        "groupBitAnd", "groupBitOr", "groupBitXor", "topK", "topKWeighted",
        "stddevPop", "stddevSamp", "varPop", "varSamp", "stddev_pop", "stddev_samp",
        "var_pop", "var_samp", "stddev", "variance", "covarPop", "covarSamp", "corr",
        "simpleLinearRegression", "sumWithOverflow", "sumKahan", "sumMap", "minMap",
        "maxMap", "avgWeighted", "histogram", "windowFunnel", "retention",
        "sequenceMatch", "sequenceCount", "countIf", "sumIf", "avgIf", "minIf", "maxIf",
        "uniqIf", "uniqExactIf", "groupArrayIf", "count_distinct", "countDistinct",
        "skewPop", "kurtPop", "entropy", "mode", "boundingRatio", "deltaSum",
    )},
    # -- window-only functions ------------------------------------------------------
    **{name: "window" for name in (
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile",
        "nth_value", "lag", "lead", "lagInFrame", "leadInFrame",
    )},
    # -- date and time --------------------------------------------------------------
    **{name: "datetime" for name in (
        "now", "now64", "today", "yesterday", "toYear", "toQuarter", "toMonth",
        "toDayOfMonth", "toDayOfWeek", "toDayOfYear", "toHour", "toMinute", "toSecond",
        "toMillisecond", "toISOWeek", "toISOYear", "toWeek", "toYearWeek",
        "toStartOfYear", "toStartOfISOYear", "toStartOfQuarter", "toStartOfMonth",
        "toStartOfWeek", "toMonday", "toStartOfDay", "toStartOfHour", "toStartOfMinute",
        "toStartOfSecond", "toStartOfFiveMinutes", "toStartOfFiveMinute",
        "toStartOfTenMinutes", "toStartOfFifteenMinutes", "toStartOfInterval",
        "toLastDayOfMonth", "toLastDayOfWeek", "toTime", "toYYYYMM", "toYYYYMMDD",
        "toYYYYMMDDhhmmss", "toUnixTimestamp", "toUnixTimestamp64Milli",
        "fromUnixTimestamp", "fromUnixTimestamp64Milli", "toTimeZone", "toTimezone",
        "toRelativeYearNum", "toRelativeMonthNum", "toRelativeWeekNum", "toRelativeDayNum",
        "toRelativeHourNum", "toRelativeMinuteNum", "toRelativeSecondNum", "timeSlot",
        "timeSlots", "dateDiff", "date_diff", "timestampDiff", "timestamp_diff", "age",
        "dateAdd", "date_add", "dateSub", "date_sub", "timestamp_add", "timestamp_sub",
        "addYears", "addQuarters", "addMonths", "addWeeks", "addDays", "addHours",
        "addMinutes", "addSeconds", "addMilliseconds", "subtractYears", "subtractQuarters",
        "subtractMonths", "subtractWeeks", "subtractDays", "subtractHours",
        "subtractMinutes", "subtractSeconds", "subtractMilliseconds", "dateTrunc",
        "date_trunc", "formatDateTime", "formatDateTimeInJodaSyntax", "dateName",
        "monthName", "parseDateTime", "parseDateTimeOrNull", "parseDateTimeBestEffort",
        "parseDateTimeBestEffortOrNull", "parseDateTimeBestEffortOrZero",
        "parseDateTime64BestEffort", "parseDateTime64BestEffortOrNull", "makeDate",
        "makeDateTime", "makeDateTime64", "toIntervalSecond", "toIntervalMinute",
        "toIntervalHour", "toIntervalDay", "toIntervalWeek", "toIntervalMonth",
        "toIntervalQuarter", "toIntervalYear", "extract", "toDate", "toDate32",
        "toDateTime", "toDateTime64", "toDateOrNull", "toDateOrZero", "toDateTimeOrNull",
        "toDateTimeOrZero", "toDateTime64OrNull", "toDateTime64OrZero",
    )},
    # -- strings --------------------------------------------------------------------
    **{name: "string" for name in (
        "length", "lengthUTF8", "char_length", "character_length", "empty", "notEmpty",
        "lower", "upper", "lowerUTF8", "upperUTF8", "reverse", "reverseUTF8", "concat",
        "concatWithSeparator", "concat_ws", "substring", "substr", "mid", "substringUTF8",
        "left", "right", "leftUTF8", "rightUTF8", "leftPad", "rightPad", "lpad", "rpad",
        "trim", "trimLeft", "trimRight", "trimBoth", "ltrim", "rtrim", "position",
        "positionCaseInsensitive", "positionUTF8", "locate", "startsWith", "endsWith",
        "like", "notLike", "ilike", "notILike", "match", "multiMatchAny",
        "multiSearchAny", "multiSearchFirstIndex", "countSubstrings", "countMatches",
        "extract", "extractAll", "extractGroups", "replaceOne", "replaceAll", "replace",
        "replaceRegexpOne", "replaceRegexpAll", "regexpExtract", "splitByChar",
        "splitByString", "splitByRegexp", "splitByWhitespace", "arrayStringConcat",
        "format", "repeat", "space", "base64Encode", "base64Decode", "tryBase64Decode",
        "hex", "unhex", "toValidUTF8", "normalizeUTF8NFC", "ascii", "char",
        "leftPadUTF8", "rightPadUTF8", "editDistance", "levenshteinDistance",
        "ngramDistance", "initcap", "initcapUTF8", "regexp_replace", "translate",
        "translateUTF8", "printf", "toStringCutToZero",
    )},
    # -- math and arithmetic --------------------------------------------------------
    **{name: "math" for name in (
        "plus", "minus", "multiply", "divide", "intDiv", "intDivOrZero", "modulo",
        "moduloOrZero", "positiveModulo", "negate", "abs", "sign", "round", "roundBankers",
        "floor", "ceil", "ceiling", "trunc", "truncate", "roundToExp2", "roundDown",
        "sqrt", "cbrt", "exp", "exp2", "exp10", "log", "ln", "log2", "log10", "log1p",
        "pow", "power", "greatest", "least", "gcd", "lcm", "pi", "e", "sin", "cos", "tan",
        "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "hypot", "isNaN",
        "isFinite", "isInfinite", "bitAnd", "bitOr", "bitXor", "bitNot", "bitShiftLeft",
        "bitShiftRight", "bitCount", "equals", "notEquals", "less", "greater",
        "lessOrEquals", "greaterOrEquals", "and", "or", "not", "xor", "rand", "rand64",
        "randCanonical", "widthBucket", "width_bucket",
    )},
    # -- conditionals and NULL handling ---------------------------------------------
    **{name: "conditional" for name in (
        "if", "multiIf", "coalesce", "ifNull", "nullIf", "isNull", "isNotNull",
        "isZeroOrNull", "assumeNotNull", "toNullable", "ifNotFinite", "transform",
    )},
    # -- type conversion ------------------------------------------------------------
    **{name: "conversion" for name in (
        "cast", "accurateCast", "accurateCastOrNull", "accurateCastOrDefault",
        "toString", "toFixedString", "toTypeName", "toInt8", "toInt16", "toInt32", "toInt64",
        "toInt128", "toInt256", "toUInt8", "toUInt16", "toUInt32", "toUInt64", "toUInt128",
        "toUInt256", "toFloat32", "toFloat64", "toInt8OrNull", "toInt16OrNull",
        "toInt32OrNull", "toInt64OrNull", "toUInt8OrNull", "toUInt16OrNull",
        "toUInt32OrNull", "toUInt64OrNull", "toFloat32OrNull", "toFloat64OrNull",
        "toInt32OrZero", "toInt64OrZero", "toUInt32OrZero", "toUInt64OrZero",
        "toFloat64OrZero", "toDecimal32", "toDecimal64", "toDecimal128", "toDecimal256",
        "toDecimal32OrNull", "toDecimal64OrNull", "toDecimal128OrNull",
        "toDecimalString", "toBool", "toUUID", "toUUIDOrNull", "generateUUIDv4",
        "reinterpretAsString", "toLowCardinality", "materialize", "identity",
        "formatReadableSize", "formatReadableQuantity", "formatReadableTimeDelta",
        "parseReadableSize",
    )},
    # -- arrays (lambdas are checked like any other expression) ----------------------
    **{name: "array" for name in (
        "array", "range", "arrayJoin", "has", "hasAll", "hasAny", "hasSubstr", "indexOf",
        "countEqual", "arrayElement", "arraySlice", "arrayConcat", "arrayPushBack",
        "arrayPushFront", "arrayPopBack", "arrayPopFront", "arrayResize", "arrayMap",
        "arrayFilter", "arrayExists", "arrayAll", "arrayFirst", "arrayLast",
        "arrayFirstIndex", "arrayLastIndex", "arrayCount", "arraySum", "arrayAvg",
        "arrayMin", "arrayMax", "arrayProduct", "arraySort", "arrayReverseSort",
        "arrayReverse", "arrayDistinct", "arrayUniq", "arrayEnumerate",
        "arrayEnumerateUniq", "arrayEnumerateDense", "arrayCompact", "arrayZip",
        "arrayFlatten", "arrayIntersect", "arrayDifference", "arrayCumSum",
        "arrayCumSumNonNegative", "arraySplit", "arrayShuffle", "arrayPartialSort",
        "arrayStringConcat", "emptyArrayString", "emptyArrayUInt32", "emptyArrayInt64",
        "length", "empty", "notEmpty", "splitByChar", "splitByString",
    )},
    # -- tuples and maps ------------------------------------------------------------
    **{name: "tuple_map" for name in (
        "tuple", "tupleElement", "untuple", "map", "mapKeys", "mapValues", "mapContains",
        "mapFromArrays",
    )},
    # -- IP addresses ---------------------------------------------------------------
    **{name: "ip" for name in (
        "toIPv4", "toIPv6", "toIPv4OrNull", "toIPv6OrNull", "toIPv4OrDefault",
        "IPv4NumToString", "IPv4StringToNum", "IPv4StringToNumOrNull", "IPv6NumToString",
        "IPv6StringToNum", "IPv6StringToNumOrNull", "IPv4ToIPv6", "IPv4CIDRToRange",
        "IPv6CIDRToRange", "IPv4NumToStringClassC", "isIPv4String", "isIPv6String",
        "isIPAddressInRange", "cutIPv6",
    )},
    # -- hashing (deterministic, no secrets involved) --------------------------------
    **{name: "hash" for name in (
        "cityHash64", "sipHash64", "sipHash128", "xxHash32", "xxHash64", "xxh3",
        "murmurHash3_32", "murmurHash3_64", "farmHash64", "MD5", "SHA1", "SHA224",
        "SHA256", "SHA512", "halfMD5", "crc32",
    )},
}

#: Aggregate-function combinators: `sum` + `If` = `sumIf`. They only wrap another
#: aggregate, so they add no reach; -Resample/-Map/-SimpleState are left out for
#: want of a use.
COMBINATORS: tuple[str, ...] = (
    "If", "Array", "Distinct", "OrNull", "OrDefault", "State", "Merge", "MergeState",
    "ForEach",
)

_LOWER: dict[str, str] = {name.lower(): name for name in ALLOWED}
_AGGREGATES: frozenset[str] = frozenset(n.lower() for n, c in ALLOWED.items() if c == "aggregate")


def canonical(name: str) -> str | None:
    """The allowlisted function `name` refers to (with any combinators), or None.

    `sumIf` → `sumIf`; `uniqExactIfOrNull` → resolved through the combinators to
    the aggregate `uniqExact`. Anything else → None, and the guard refuses it.
    """
    low = name.lower()
    if low in _LOWER:
        return _LOWER[low]
    return name if _aggregate_with_combinators(low) else None


def _aggregate_with_combinators(low: str) -> bool:
    for suffix in COMBINATORS:
        s = suffix.lower()
        if low.endswith(s) and len(low) > len(s):
            base = low[: -len(s)]
            if base in _AGGREGATES or _aggregate_with_combinators(base):
                return True
    return False


def is_allowed(name: str) -> bool:
    return canonical(name) is not None
