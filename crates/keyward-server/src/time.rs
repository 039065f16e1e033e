//! Times as people read them: RFC 3339, UTC, milliseconds; the one formatter the server's error
//! messages and the CLI's reports share. Also the one conversion between the store's times
//! (milliseconds since the UNIX epoch) and the API's `google.protobuf.Timestamp`, for the server
//! and its clients alike.

/// A time in milliseconds since the UNIX epoch (the store's) as a protobuf `Timestamp`.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf `Timestamp` in milliseconds since the UNIX epoch (saturating; sub-millisecond
/// nanos are dropped).
pub fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// `2026-12-06T19:10:00.123Z`: RFC 3339, UTC, milliseconds. Outside years 0000–9999, which
/// RFC 3339 cannot write, the raw value.
pub fn rfc3339_utc_ms(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return format!("{ms} ms since 1970-01-01T00:00:00Z");
    }
    let (h, m, s, milli) = (
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// Reads a time as people write it for a cutoff: `2026-11-01` (midnight UTC),
/// `2026-11-01T12:30:00Z` or with milliseconds (`…:00.250Z`), UTC only. `None` when it is not
/// one of those or not a real date.
pub fn parse_utc_ms(text: &str) -> Option<i64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = number(parts.next()?, 4)?;
    let month: u32 = number(parts.next()?, 2)?;
    let day: u32 = number(parts.next()?, 2)?;
    let days = days_from_civil(year, month, day)?;
    let mut ms = days * 86_400_000;
    if let Some(time) = time {
        let (hms, milli) = match time.split_once('.') {
            Some((hms, milli)) => (hms, number::<i64>(milli, 3)?),
            None => (time, 0),
        };
        let mut parts = hms.splitn(3, ':');
        let h: i64 = number(parts.next()?, 2)?;
        let m: i64 = number(parts.next()?, 2)?;
        let s: i64 = number(parts.next()?, 2)?;
        if h > 23 || m > 59 || s > 59 {
            return None;
        }
        ms += ((h * 60 + m) * 60 + s) * 1000 + milli;
    }
    Some(ms)
}

/// Exactly `digits` ASCII digits.
fn number<T: std::str::FromStr>(text: &str, digits: usize) -> Option<T> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`);
/// `None` for a date that does not exist (2026-02-30).
fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // Rejects day 31 of a 30-day month, 29 February of a common year, …
    (civil_from_days(days) == (year, month, day)).then_some(days)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, <http://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (
        year,
        u32::try_from(month).unwrap_or(0),
        u32::try_from(day).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_are_read_as_written_in_utc() {
        assert_eq!(parse_utc_ms("1970-01-01"), Some(0));
        assert_eq!(
            parse_utc_ms("2026-12-06T15:23:01.310Z"),
            Some(1_796_570_581_310)
        );
        assert_eq!(
            parse_utc_ms("2026-12-06T15:23:01Z"),
            Some(1_796_570_581_000)
        );
        assert_eq!(parse_utc_ms("2000-02-29"), Some(951_782_400_000));
        for bad in [
            "2100-02-29",
            "2026-04-31",
            "2026-13-01",
            "2026-1-01",
            "2026-12-06T15:23:01",
            "2026-12-06T24:00:00Z",
            "2026-12-06T15:23:01+01:00",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_utc_ms(bad), None, "{bad}");
        }
        for ms in [0, 951_782_400_000, 1_796_570_581_310, 4_107_542_400_000] {
            assert_eq!(parse_utc_ms(&rfc3339_utc_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        // Checked against `date -u -d @…`.
        assert_eq!(rfc3339_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_utc_ms(1_796_570_581_310),
            "2026-12-06T15:23:01.310Z"
        );
        assert_eq!(rfc3339_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        // 2100 is not a leap year.
        assert_eq!(
            rfc3339_utc_ms(4_107_456_000_999),
            "2100-02-28T00:00:00.999Z"
        );
        assert_eq!(
            rfc3339_utc_ms(4_107_542_400_000),
            "2100-03-01T00:00:00.000Z"
        );
        assert_eq!(rfc3339_utc_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_utc_ms(i64::MAX),
            format!("{} ms since 1970-01-01T00:00:00Z", i64::MAX)
        );
    }

    #[test]
    fn civil_dates_round_trip_every_day_of_four_centuries() {
        // Every day from 1900 to 2300 advances the date by exactly one day.
        let mut previous = civil_from_days(-25_567); // 1900-01-01
        assert_eq!(previous, (1900, 1, 1));
        for days in -25_566..120_000 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = previous;
            let leap = py % 4 == 0 && (py % 100 != 0 || py % 400 == 0);
            let month_days = match pm {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let next_day = (y, m, d) == (py, pm, pd + 1) && pd < month_days;
            let next_month = (y, m, d) == (py, pm + 1, 1) && pd == month_days;
            let next_year = (y, m, d) == (py + 1, 1, 1) && (pm, pd) == (12, 31);
            assert!(
                next_day || next_month || next_year,
                "{previous:?} -> {:?}",
                (y, m, d)
            );
            previous = (y, m, d);
        }
    }
}
