//! When the next backup is due: the CronJob's schedule (`SCHEDULE`) in its time zone
//! (`SCHEDULE_TIMEZONE`), read exactly as Kubernetes reads `spec.schedule` and
//! `spec.timeZone`.
//!
//! Kubernetes parses and runs CronJob schedules with robfig/cron v3 (`ParseStandard`,
//! vendored at v3.0.1), not with Vixie cron, POSIX cron or the `cron` crate, and they
//! disagree on exactly the points that matter here. This module transcribes robfig's
//! `parser.go` (`Parse`, `getField`, `getRange`, `parseDescriptor`) and `spec.go`
//! (`SpecSchedule.Next`, `dayMatches`), so that the program accepts what the CronJob
//! runs, refuses what it cannot run, and publishes the instant the controller will
//! start the next Job:
//!
//! * five fields, minute hour day-of-month month day-of-week, no seconds field; day of
//!   week 0-6 from Sunday (7 is refused), names `SUN`-`SAT` and `JAN`-`DEC` in any
//!   case, alone or as range ends (not as steps); `*` and `?` alike; `a-b`, `a-b/n`,
//!   `*/n`, and `a/n` meaning `a-max/n`; a range whose start is after its end is
//!   refused (`FRI-SUN`, `5-0`); lists, with empty items ignored (robfig's
//!   `FieldsFunc`);
//! * day of month and day of week: when either field is starred (`*` or `?`, with no
//!   step or a step of 1) a day must match both, otherwise either (Vixie's OR). A
//!   stepped star such as `*/2` is *not* starred for robfig (Vixie says it is);
//! * the descriptors `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight`
//!   `@hourly`, spelled exactly so, and `@every <Go duration>`: undocumented, but the
//!   API server accepts it and the controller runs it (kubernetes#104012, #109250);
//! * a `TZ=zone ` or `CRON_TZ=zone ` prefix: refused by the API server on create
//!   since 1.27, but a CronJob that already had one keeps running with it, so it is
//!   accepted, and refused alongside `SCHEDULE_TIMEZONE` (the API server's "cannot use
//!   both timeZone field and TZ or CRON_TZ in schedule").
//!
//! The next occurrence walks wall-clock fields in the zone as robfig's `Next` does,
//! including its daylight-saving behaviour: a time that does not exist that day (spring
//! forward; midnight too, where the change is at midnight) is skipped that day, a time
//! that exists twice (fall back) fires twice. Nothing within five years: no next time
//! (as robfig, e.g. `0 0 30 2 *`).
//!
//! Not reproduced: for `@every` the controller counts from the CronJob's last schedule
//! time, which the program does not read; the next time is counted from the instant
//! given (the run's start), a few seconds to minutes later than the controller's.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// robfig's `starBit`: the field was `*` or `?` without a step above 1.
const STAR: u64 = 1 << 63;

/// A field's bounds and names (robfig's `bounds`), with the name used in messages.
struct Bounds {
    field: &'static str,
    min: u64,
    max: u64,
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds { field: "minute", min: 0, max: 59, names: &[] };
const HOURS: Bounds = Bounds { field: "hour", min: 0, max: 23, names: &[] };
const DAYS_OF_MONTH: Bounds = Bounds { field: "day of month", min: 1, max: 31, names: &[] };
const MONTHS: Bounds = Bounds {
    field: "month",
    min: 1,
    max: 12,
    names: &[("jan", 1), ("feb", 2), ("mar", 3), ("apr", 4), ("may", 5), ("jun", 6), ("jul", 7), ("aug", 8), ("sep", 9), ("oct", 10), ("nov", 11), ("dec", 12)],
};
const DAYS_OF_WEEK: Bounds =
    Bounds { field: "day of week", min: 0, max: 6, names: &[("sun", 0), ("mon", 1), ("tue", 2), ("wed", 3), ("thu", 4), ("fri", 5), ("sat", 6)] };

/// The bits of a 5-field schedule (robfig's `SpecSchedule`; its seconds are always 0).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Spec(Spec),
    /// `@every`: robfig's `ConstantDelaySchedule`, whole seconds, at least one.
    Every {
        seconds: i64,
    },
}

/// A parsed CronJob schedule and the zone its times are in.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    kind: Kind,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// What the variables' messages say is expected.
pub const EXPECTED_SCHEDULE: &str = "the CronJob's spec.schedule as Kubernetes reads it: 5 fields (minute hour day-of-month month day-of-week; \
     day of week 0-6 from Sunday, or SUN-SAT) such as \"0 2 * * *\", or @yearly, @monthly, @weekly, @daily or @hourly";
pub const EXPECTED_ZONE: &str = "the CronJob's spec.timeZone: an IANA time zone name such as UTC, Europe/Paris or America/New_York";

impl Schedule {
    /// Parses `expression` as the API server and the CronJob controller do. `zone` is
    /// the CronJob's `timeZone` (`SCHEDULE_TIMEZONE`); `None`, the controller's own zone,
    /// taken to be UTC. The error says what is wrong, in robfig's words where it has
    /// them, prefixed by the field.
    pub fn parse(expression: &str, zone: Option<Tz>) -> Result<Schedule, String> {
        let given = expression.trim();
        let mut spec = given;
        if spec.is_empty() {
            return Err("empty schedule".into());
        }
        let mut tz = zone.unwrap_or(Tz::UTC);
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            let (Some(space), Some(eq)) = (spec.find(' '), spec.find('=')) else {
                return Err("a TZ= or CRON_TZ= prefix must be followed by a space and the schedule".into());
            };
            let name = &spec[eq + 1..space];
            // Go's time.LoadLocation: "" is UTC, "Local" the controller's own zone.
            let prefixed = match name {
                "" => Tz::UTC,
                "Local" => return Err("provided location Local: the controller's own zone; name the zone".into()),
                _ => name.parse::<Tz>().map_err(|_| format!("provided bad location {name}: unknown time zone {name}"))?,
            };
            if zone.is_some() {
                return Err("cannot use both SCHEDULE_TIMEZONE (the CronJob's timeZone) and TZ or CRON_TZ in the schedule".into());
            }
            tz = prefixed;
            spec = spec[space..].trim();
        }
        let kind = if spec.starts_with('@') { descriptor(spec)? } else { Kind::Spec(fields(spec)?) };
        Ok(Schedule { expression: given.to_string(), zone: tz, kind })
    }

    /// The expression as given (surrounding whitespace removed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone the schedule's times are in.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first time the schedule fires strictly after `t` (robfig's `Next`), or
    /// `None` when it does not fire within five years.
    pub fn next_after(&self, t: &DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = match &self.kind {
            Kind::Every { seconds } => t.timestamp().checked_add(*seconds)?,
            Kind::Spec(spec) => self.next_spec(spec, t.timestamp().checked_add(1)?)?,
        };
        DateTime::from_timestamp(secs, 0)
    }

    /// Every following time.
    #[cfg(test)]
    pub fn after<'a>(&'a self, t: &DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + 'a {
        std::iter::successors(self.next_after(t), move |previous| self.next_after(previous))
    }

    /// robfig's `SpecSchedule.Next` from `t` (seconds since the epoch, the earliest
    /// candidate), line by line: `added` says a field was already moved, so the ones
    /// below it start from their minimum; a wrap restarts from the month.
    fn next_spec(&self, spec: &Spec, mut t: i64) -> Option<i64> {
        if !spec.can_fire() {
            return None;
        }
        let mut added = false;
        let year_limit = self.wall(t)?.year + 5;
        'wrap: loop {
            let w = self.wall(t)?;
            if w.year > year_limit {
                return None;
            }
            while spec.month & (1 << self.wall(t)?.month) == 0 {
                if !added {
                    added = true;
                    let w = self.wall(t)?;
                    t = self.date(w.year, w.month as i64, 1, 0, 0, 0)?;
                }
                let w = self.wall(t)?;
                t = self.date(w.year, w.month as i64 + 1, w.day as i64, w.hour as i64, w.minute as i64, w.second as i64)?;
                if self.wall(t)?.month == 1 {
                    continue 'wrap;
                }
            }
            while !spec.day_matches(&self.wall(t)?) {
                if !added {
                    added = true;
                    let w = self.wall(t)?;
                    t = self.date(w.year, w.month as i64, w.day as i64, 0, 0, 0)?;
                }
                let w = self.wall(t)?;
                t = self.date(w.year, w.month as i64, w.day as i64 + 1, w.hour as i64, w.minute as i64, w.second as i64)?;
                // Midnight moved by a daylight-saving change: back to it.
                let hour = self.wall(t)?.hour as i64;
                if hour != 0 {
                    t += if hour > 12 { (24 - hour) * 3600 } else { -hour * 3600 };
                }
                if self.wall(t)?.day == 1 {
                    continue 'wrap;
                }
            }
            while spec.hour & (1 << self.wall(t)?.hour) == 0 {
                if !added {
                    added = true;
                    let w = self.wall(t)?;
                    t = self.date(w.year, w.month as i64, w.day as i64, w.hour as i64, 0, 0)?;
                }
                t += 3600;
                if self.wall(t)?.hour == 0 {
                    continue 'wrap;
                }
            }
            while spec.minute & (1 << self.wall(t)?.minute) == 0 {
                if !added {
                    added = true;
                    t -= t.rem_euclid(60);
                }
                t += 60;
                if self.wall(t)?.minute == 0 {
                    continue 'wrap;
                }
            }
            // The seconds field is always 0.
            while self.wall(t)?.second != 0 {
                added = true;
                t += 1;
                if self.wall(t)?.second == 0 {
                    continue 'wrap;
                }
            }
            return Some(t);
        }
    }

    /// The wall-clock fields of instant `t` in the zone.
    fn wall(&self, t: i64) -> Option<Wall> {
        let local = DateTime::from_timestamp(t, 0)?.with_timezone(&self.zone);
        Some(Wall {
            year: local.year() as i64,
            month: local.month(),
            day: local.day(),
            hour: local.hour(),
            minute: local.minute(),
            second: local.second(),
            weekday: local.weekday().num_days_from_sunday(),
        })
    }

    /// The zone's offset from UTC at instant `t`, in seconds.
    fn offset_at(&self, t: i64) -> Option<i64> {
        let utc = DateTime::from_timestamp(t, 0)?.naive_utc();
        Some(i64::from(self.zone.offset_from_utc_datetime(&utc).fix().local_minus_utc()))
    }

    /// Go's `time.Date` in the zone: out-of-range fields carry over (month 13, day 32,
    /// hour -1); a wall time that does not exist or exists twice resolves as Go
    /// resolves it (the offset at the wall time read as UTC, corrected once).
    fn date(&self, year: i64, month: i64, day: i64, hour: i64, minute: i64, second: i64) -> Option<i64> {
        let year = year + (month - 1).div_euclid(12);
        let month = (month - 1).rem_euclid(12) + 1;
        let first = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month as u32, 1)?;
        let days = first.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days() + day - 1;
        let local = days * 86400 + hour * 3600 + minute * 60 + second;
        let offset = self.offset_at(local)?;
        let corrected = self.offset_at(local - offset)?;
        Some(local - corrected)
    }
}

/// Wall-clock fields (`weekday`: 0 is Sunday).
struct Wall {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    weekday: u32,
}

impl Spec {
    /// robfig's `dayMatches`: both when either field is starred, else either.
    fn day_matches(&self, w: &Wall) -> bool {
        let dom = self.dom & (1 << w.day) != 0;
        let dow = self.dow & (1 << w.weekday) != 0;
        if self.dom & STAR != 0 || self.dow & STAR != 0 { dom && dow } else { dom || dow }
    }

    /// False when a field matches nothing (a field such as `,`): robfig then searches
    /// five years in vain, this answers at once.
    fn can_fire(&self) -> bool {
        let some = |bits: u64| bits & !STAR != 0;
        let days = if self.dom & STAR != 0 || self.dow & STAR != 0 { some(self.dom) && some(self.dow) } else { some(self.dom) || some(self.dow) };
        some(self.minute) && some(self.hour) && some(self.month) && days
    }
}

/// The five fields (robfig's `Parse` with `Minute | Hour | Dom | Month | Dow`).
fn fields(spec: &str) -> Result<Spec, String> {
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        let hint = if fields.len() == 6 { "; a Kubernetes schedule has no seconds field" } else { "" };
        return Err(format!("expected exactly 5 fields (minute hour day-of-month month day-of-week), found {}{hint}", fields.len()));
    }
    Ok(Spec {
        minute: field(fields[0], &MINUTES)?,
        hour: field(fields[1], &HOURS)?,
        dom: field(fields[2], &DAYS_OF_MONTH)?,
        month: field(fields[3], &MONTHS)?,
        dow: field(fields[4], &DAYS_OF_WEEK)?,
    })
}

/// robfig's `parseDescriptor`: exact spellings only.
fn descriptor(spec: &str) -> Result<Kind, String> {
    let all = |b: &Bounds| bits(b.min, b.max, 1) | STAR;
    let (minute, hour) = (1 << MINUTES.min, 1 << HOURS.min);
    let spec = match spec {
        "@yearly" | "@annually" => Spec { minute, hour, dom: 1 << DAYS_OF_MONTH.min, month: 1 << MONTHS.min, dow: all(&DAYS_OF_WEEK) },
        "@monthly" => Spec { minute, hour, dom: 1 << DAYS_OF_MONTH.min, month: all(&MONTHS), dow: all(&DAYS_OF_WEEK) },
        "@weekly" => Spec { minute, hour, dom: all(&DAYS_OF_MONTH), month: all(&MONTHS), dow: 1 << DAYS_OF_WEEK.min },
        "@daily" | "@midnight" => Spec { minute, hour, dom: all(&DAYS_OF_MONTH), month: all(&MONTHS), dow: all(&DAYS_OF_WEEK) },
        "@hourly" => Spec { minute, hour: all(&HOURS), dom: all(&DAYS_OF_MONTH), month: all(&MONTHS), dow: all(&DAYS_OF_WEEK) },
        _ => {
            let Some(duration) = spec.strip_prefix("@every ") else {
                return Err(format!("unrecognized descriptor: {spec} (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"));
            };
            let nanos = go_duration(duration).map_err(|e| format!("failed to parse duration {spec}: {e}"))?;
            // robfig's Every: at least a second, rounded down to whole seconds.
            return Ok(Kind::Every { seconds: (nanos / 1_000_000_000).max(1) as i64 });
        }
    };
    Ok(Kind::Spec(spec))
}

/// robfig's `getField`: a comma-separated list of ranges, empty items skipped.
fn field(text: &str, b: &Bounds) -> Result<u64, String> {
    let mut out = 0;
    for expr in text.split(',').filter(|e| !e.is_empty()) {
        out |= range(expr, b).map_err(|e| format!("{} field: {e}", b.field))?;
    }
    Ok(out)
}

/// robfig's `getRange`: `*`, `?`, `n`, `a-b`, each with an optional `/step`.
fn range(expr: &str, b: &Bounds) -> Result<u64, String> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra);
    if low_and_high[0] == "*" || low_and_high[0] == "?" {
        // robfig ignores whatever follows a star's hyphen ("*-5" is "*").
        (start, end, extra) = (b.min, b.max, STAR);
    } else {
        start = int_or_name(low_and_high[0], b)?;
        end = match low_and_high.len() {
            1 => start,
            2 => int_or_name(low_and_high[1], b)?,
            _ => return Err(format!("too many hyphens: {expr}")),
        };
        extra = 0;
    }
    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = int(range_and_step[1])?;
            // "n/step" means "n-max/step".
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(format!("too many slashes: {expr}")),
    };
    if start < b.min {
        return Err(format!("beginning of range ({start}) below minimum ({}): {expr}", b.min));
    }
    if end > b.max {
        let hint = if b.max == 6 && end == 7 { "; Kubernetes numbers the days of the week 0-6 from Sunday: Sunday is 0 or SUN" } else { "" };
        return Err(format!("end of range ({end}) above maximum ({}): {expr}{hint}", b.max));
    }
    if start > end {
        return Err(format!("beginning of range ({start}) beyond end of range ({end}): {expr}"));
    }
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(bits(start, end, step) | extra)
}

/// robfig's `parseIntOrName`: a name of the field (any case), else a number.
fn int_or_name(expr: &str, b: &Bounds) -> Result<u64, String> {
    let lower = expr.to_lowercase();
    match b.names.iter().find(|(name, _)| *name == lower) {
        Some((_, value)) => Ok(*value),
        None => int(expr),
    }
}

/// robfig's `mustParseInt`: Go's `strconv.Atoi` (an optional sign, decimal digits,
/// within 64 bits), then not negative.
fn int(expr: &str) -> Result<u64, String> {
    let (negative, digits) = match expr.as_bytes().first() {
        Some(b'-') => (true, &expr[1..]),
        Some(b'+') => (false, &expr[1..]),
        _ => (false, expr),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("failed to parse int from {expr}: invalid syntax"));
    }
    let limit: u128 = if negative { 1 << 63 } else { (1 << 63) - 1 };
    let value = digits.bytes().try_fold(0u128, |v, c| Some(v * 10 + u128::from(c - b'0')).filter(|v| *v <= limit));
    match value {
        None => Err(format!("failed to parse int from {expr}: value out of range")),
        Some(v) if negative && v > 0 => Err(format!("negative number (-{v}) not allowed: {expr}")),
        Some(v) => Ok(v as u64),
    }
}

/// robfig's `getBits`: every `step`-th value from `min` to `max`.
fn bits(min: u64, max: u64, step: u64) -> u64 {
    let mut out = 0;
    let mut i = min;
    while i <= max {
        out |= 1 << i;
        match i.checked_add(step) {
            Some(next) => i = next,
            None => break,
        }
    }
    out
}

/// Go's `time.ParseDuration` (`[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`), in nanoseconds.
fn go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const MAX: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let first = s.as_bytes()[0];
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let n = digits(s);
        let whole: u128 = if n == 0 { 0 } else { s[..n].parse().map_err(|_| invalid())? };
        if whole > MAX {
            return Err(invalid());
        }
        s = &s[n..];
        let (mut fraction, mut scale, mut post) = (0u128, 1f64, false);
        if let Some(rest) = s.strip_prefix('.') {
            let m = digits(rest);
            post = m > 0;
            for c in rest[..m].bytes() {
                // Go stops adding digits once they would overflow, and ignores the rest.
                if fraction > (MAX - 1) / 10 {
                    break;
                }
                fraction = fraction * 10 + u128::from(c - b'0');
                scale *= 10.0;
            }
            s = &rest[m..];
        }
        if n == 0 && !post {
            return Err(invalid());
        }
        let unit_len = s.bytes().take_while(|c| !(*c == b'.' || c.is_ascii_digit())).count();
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {text:?}"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {text:?}")),
        };
        if whole > MAX / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            value += (fraction as f64 * (unit as f64 / scale)) as u128;
            if value > MAX {
                return Err(invalid());
            }
        }
        total += value;
        if total > MAX {
            return Err(invalid());
        }
    }
    if negative {
        Ok(-(total as i128))
    } else if total > MAX - 1 {
        Err(invalid())
    } else {
        Ok(total as i128)
    }
}

/// Checks a `timeZone` as the API server does (`validateTimeZone`): each `/`-part of
/// 1-14 characters among letters, digits, `.`, `-`, `_`, `+`, neither `.` nor `..` nor
/// starting with `-`; not `Local`; a zone of the IANA database.
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    if name.is_empty() {
        return Err("an empty time zone".into());
    }
    let part_ok = |p: &str| {
        p != "." && p != ".." && !p.starts_with('-') && (1..=14).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_alphanumeric() || b".-_+".contains(&c))
    };
    if !name.split('/').all(part_ok) {
        return Err(format!("unknown time zone {name}"));
    }
    if name.eq_ignore_ascii_case("Local") {
        return Err("Local is not an explicit time zone (Kubernetes refuses it)".into());
    }
    name.parse::<Tz>().map_err(|_| format!("unknown time zone {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}")).with_timezone(&Utc)
    }

    fn next(expression: &str, zone: Option<&str>, after: &str) -> Option<String> {
        let zone = zone.map(|z| parse_zone(z).unwrap_or_else(|e| panic!("{z}: {e}")));
        let schedule = Schedule::parse(expression, zone).unwrap_or_else(|e| panic!("{expression:?} must parse: {e}"));
        schedule.next_after(&at(after)).map(|t| t.to_rfc3339())
    }

    /// Saturday 2024-06-15 12:00 UTC; the 1st of June was a Saturday, the 1st of
    /// July a Monday.
    const SATURDAY: &str = "2024-06-15T12:00:00Z";

    #[test]
    fn next_occurrence_as_the_cronjob_controller_computes_it() {
        // (expression, SCHEDULE_TIMEZONE, after, next)
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            // Day of week, every spelling: 0 is Sunday.
            ("0 2 * * 0", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * 6", None, SATURDAY, "2024-06-22T02:00:00+00:00"),
            ("0 2 * * SUN", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * sun", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * Sun", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * 1-5", None, SATURDAY, "2024-06-17T02:00:00+00:00"),
            ("0 2 * * MON-FRI", None, SATURDAY, "2024-06-17T02:00:00+00:00"),
            ("0 2 * * mon-fri", None, "2024-06-17T02:00:00Z", "2024-06-18T02:00:00+00:00"),
            ("0 2 * * */2", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * */2", None, "2024-06-16T02:00:00Z", "2024-06-18T02:00:00+00:00"),
            ("0 2 * * 0,6", None, "2024-06-14T12:00:00Z", "2024-06-15T02:00:00+00:00"),
            ("0 2 * * 0,6", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 * * 5/1", None, SATURDAY, "2024-06-21T02:00:00+00:00"),
            ("0 2 * * ?", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            ("0 2 ? * 3", None, SATURDAY, "2024-06-19T02:00:00+00:00"),
            // Day of month OR day of week when both are restricted.
            ("0 2 1 * 1", None, SATURDAY, "2024-06-17T02:00:00+00:00"),
            ("0 2 1 * 1", None, "2024-06-29T12:00:00Z", "2024-07-01T02:00:00+00:00"),
            ("0 2 20 * 1", None, "2024-06-17T12:00:00Z", "2024-06-20T02:00:00+00:00"),
            // AND when either is starred; a stepped star is not starred.
            ("0 2 * * 1", None, SATURDAY, "2024-06-17T02:00:00+00:00"),
            ("0 2 1 * *", None, SATURDAY, "2024-07-01T02:00:00+00:00"),
            ("0 2 */1 * 1", None, SATURDAY, "2024-06-17T02:00:00+00:00"),
            ("0 2 */10 * 3", None, SATURDAY, "2024-06-19T02:00:00+00:00"),
            ("0 2 */10 * 3", None, "2024-06-19T12:00:00Z", "2024-06-21T02:00:00+00:00"),
            ("0 2 1-31 * 3", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            // Months, ranges, steps, lists.
            ("30 4 1 JAN,jul *", None, SATURDAY, "2024-07-01T04:30:00+00:00"),
            ("0 0 1 */4 *", None, SATURDAY, "2024-09-01T00:00:00+00:00"),
            ("*/15 * * * *", None, "2024-06-15T12:07:30Z", "2024-06-15T12:15:00+00:00"),
            ("5,,10 * * * *", None, SATURDAY, "2024-06-15T12:05:00+00:00"),
            ("0 9-17/4 * * *", None, SATURDAY, "2024-06-15T13:00:00+00:00"),
            ("*-5 3 * * *", None, SATURDAY, "2024-06-16T03:00:00+00:00"),
            ("0 2 29 2 *", None, SATURDAY, "2028-02-29T02:00:00+00:00"),
            ("0 2 * * *", None, "2024-06-15T02:00:00Z", "2024-06-16T02:00:00+00:00"),
            ("0 2 * * *", None, "2024-06-15T01:59:59.999Z", "2024-06-15T02:00:00+00:00"),
            // Descriptors.
            ("@yearly", None, SATURDAY, "2025-01-01T00:00:00+00:00"),
            ("@annually", None, SATURDAY, "2025-01-01T00:00:00+00:00"),
            ("@monthly", None, SATURDAY, "2024-07-01T00:00:00+00:00"),
            ("@weekly", None, SATURDAY, "2024-06-16T00:00:00+00:00"),
            ("@daily", None, SATURDAY, "2024-06-16T00:00:00+00:00"),
            ("@midnight", None, SATURDAY, "2024-06-16T00:00:00+00:00"),
            ("@hourly", None, "2024-06-15T12:00:00Z", "2024-06-15T13:00:00+00:00"),
            ("@every 6h", None, "2024-06-15T12:00:00.5Z", "2024-06-15T18:00:00+00:00"),
            ("@every 1h30m", None, SATURDAY, "2024-06-15T13:30:00+00:00"),
            ("@every 500ms", None, SATURDAY, "2024-06-15T12:00:01+00:00"),
            // Time zones: the CronJob's timeZone, or a grandfathered prefix.
            ("0 2 * * *", Some("Europe/Paris"), SATURDAY, "2024-06-16T00:00:00+00:00"),
            ("0 2 * * *", Some("America/New_York"), SATURDAY, "2024-06-16T06:00:00+00:00"),
            ("0 2 * * 1-5", Some("Asia/Tokyo"), SATURDAY, "2024-06-16T17:00:00+00:00"),
            ("@daily", Some("Asia/Kolkata"), SATURDAY, "2024-06-15T18:30:00+00:00"),
            ("CRON_TZ=Europe/Paris 0 2 * * *", None, SATURDAY, "2024-06-16T00:00:00+00:00"),
            ("TZ=America/New_York @daily", None, SATURDAY, "2024-06-16T04:00:00+00:00"),
            ("TZ= 0 2 * * *", None, SATURDAY, "2024-06-16T02:00:00+00:00"),
            // Daylight saving (Paris: 2024-03-31 02:00 → 03:00, 2024-10-27 03:00 → 02:00).
            // A time that does not exist is skipped that day, as robfig does.
            ("30 2 * * *", Some("Europe/Paris"), "2024-03-30T12:00:00Z", "2024-04-01T00:30:00+00:00"),
            ("30 3 * * *", Some("Europe/Paris"), "2024-03-30T12:00:00Z", "2024-03-31T01:30:00+00:00"),
            // A time that exists twice fires twice.
            ("30 2 * * *", Some("Europe/Paris"), "2024-10-26T12:00:00Z", "2024-10-27T00:30:00+00:00"),
            ("30 2 * * *", Some("Europe/Paris"), "2024-10-27T00:30:00Z", "2024-10-27T01:30:00+00:00"),
            ("30 2 * * *", Some("Europe/Paris"), "2024-10-27T01:30:00Z", "2024-10-28T01:30:00+00:00"),
            // A midnight that does not exist (Havana, Sunday 2024-03-10 00:00 → 01:00):
            // skipped too; the day itself is found (robfig's hour correction).
            ("@daily", Some("America/Havana"), "2024-03-09T12:00:00Z", "2024-03-11T04:00:00+00:00"),
            ("0 0 * * 0", Some("America/Havana"), "2024-03-09T12:00:00Z", "2024-03-17T04:00:00+00:00"),
            ("0 1 * * 0", Some("America/Havana"), "2024-03-09T12:00:00Z", "2024-03-10T05:00:00+00:00"),
        ];
        for (expression, zone, after, expected) in cases {
            assert_eq!(next(expression, *zone, after).as_deref(), Some(*expected), "{expression:?} in {zone:?} after {after}");
        }
    }

    #[test]
    fn the_issue_cases_would_fail_on_the_cron_crate_reading() {
        // "0 2 * * 0" was refused (the cron crate has no day 0); "0 2 * * 1-5" read 1 as
        // Sunday and so published Friday-to-Monday wrong: on a Saturday the next
        // weekday run is Monday, not Sunday.
        assert_eq!(next("0 2 * * 0", None, SATURDAY).as_deref(), Some("2024-06-16T02:00:00+00:00"));
        let monday = next("0 2 * * 1-5", None, SATURDAY).expect("fires");
        assert_eq!(monday, "2024-06-17T02:00:00+00:00");
        assert_eq!(at(&monday).weekday(), chrono::Weekday::Mon);
        // "0 2 1 * 1": the 1st and every Monday (the cron crate: Mondays that are the 1st).
        let s = Schedule::parse("0 2 1 * 1", None).expect("parses");
        let firsts: Vec<String> = s.after(&at("2024-06-28T00:00:00Z")).take(3).map(|t| t.format("%a %d").to_string()).collect();
        assert_eq!(firsts, ["Mon 01", "Mon 08", "Mon 15"]);
        let s = Schedule::parse("0 2 1 * 1", None).expect("parses");
        let firsts: Vec<String> = s.after(&at("2024-08-26T12:00:00Z")).take(3).map(|t| t.format("%a %d").to_string()).collect();
        assert_eq!(firsts, ["Sun 01", "Mon 02", "Mon 09"]);
    }

    #[test]
    fn what_kubernetes_refuses_is_refused_with_its_reason() {
        // (expression, SCHEDULE_TIMEZONE, a fragment of the message)
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("0 2 * * 7", None, "day of week field: end of range (7) above maximum (6): 7; Kubernetes numbers the days of the week 0-6 from Sunday"),
            ("0 2 * * 1-7", None, "end of range (7) above maximum (6): 1-7"),
            ("0 2 * * 5-0", None, "beginning of range (5) beyond end of range (0): 5-0"),
            ("0 2 * * FRI-SUN", None, "beginning of range (5) beyond end of range (0): FRI-SUN"),
            ("0 2 * * MONDAY", None, "day of week field: failed to parse int from MONDAY"),
            ("0 2 * * */MON", None, "failed to parse int from MON"),
            ("0 2 * * 1#2", None, "failed to parse int from 1#2"),
            ("0 2 * * 5L", None, "failed to parse int from 5L"),
            ("0 2 L * *", None, "day of month field: failed to parse int from L"),
            ("0 2 0 * *", None, "day of month field: beginning of range (0) below minimum (1)"),
            ("0 2 * 13 *", None, "month field: end of range (13) above maximum (12)"),
            ("0 2 * SUN *", None, "month field: failed to parse int from SUN"),
            ("60 2 * * *", None, "minute field: end of range (60) above maximum (59)"),
            ("0 24 * * *", None, "hour field: end of range (24) above maximum (23)"),
            ("0 2 * * 1-2-3", None, "too many hyphens: 1-2-3"),
            ("0 2 * * 1/2/3", None, "too many slashes: 1/2/3"),
            ("*/0 2 * * *", None, "step of range should be a positive number: */0"),
            ("*/-1 2 * * *", None, "negative number (-1) not allowed: -1"),
            ("-1 2 * * *", None, "failed to parse int from : invalid syntax"),
            ("99999999999999999999 2 * * *", None, "value out of range"),
            ("0 2 * *", None, "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 4"),
            ("0 0 2 * * *", None, "found 6; a Kubernetes schedule has no seconds field"),
            ("every night", None, "found 2"),
            ("@DAILY", None, "unrecognized descriptor: @DAILY"),
            ("@reboot", None, "unrecognized descriptor: @reboot"),
            ("@every", None, "unrecognized descriptor: @every"),
            ("@every 1d", None, "time: unknown unit \"d\" in duration \"1d\""),
            ("@every 10", None, "time: missing unit in duration \"10\""),
            ("@every 1h 30m", None, "unknown unit \"h \""),
            ("CRON_TZ=Europe/Pariss 0 2 * * *", None, "provided bad location Europe/Pariss"),
            ("CRON_TZ=Local 0 2 * * *", None, "name the zone"),
            ("TZ=UTC", None, "must be followed by a space and the schedule"),
            ("CRON_TZ=UTC 0 2 * * *", Some("UTC"), "cannot use both SCHEDULE_TIMEZONE (the CronJob's timeZone) and TZ or CRON_TZ"),
            ("  ", None, "empty schedule"),
        ];
        for (expression, zone, fragment) in cases {
            let zone = zone.map(|z| parse_zone(z).expect("zone"));
            let e = Schedule::parse(expression, zone).expect_err(&format!("{expression:?} must be refused"));
            assert!(e.contains(fragment), "{expression:?}: {e:?} does not say {fragment:?}");
        }
    }

    #[test]
    fn quirks_of_robfig_are_kept_since_kubernetes_accepts_them() {
        for accepted in ["+5 2 * * *", "007 2 * * *", ", 2 * * *", "0 2 * * *-9", "0\t2 * *  *", "*/100 * * * *", "@every 0", "@every -1h", "@every .5s"] {
            assert!(Schedule::parse(accepted, None).is_ok(), "{accepted:?} is accepted by Kubernetes");
        }
        // A field that matches nothing, or a date that never comes: accepted, never fires.
        assert_eq!(next(", 2 * * *", None, SATURDAY), None);
        assert_eq!(next("0 0 30 2 *", None, SATURDAY), None);
        assert_eq!(next("0 0 31 4 *", None, SATURDAY), None);
        // "*/100" keeps only minute 0; "@every" below a second is a second.
        assert_eq!(next("*/100 * * * *", None, SATURDAY).as_deref(), Some("2024-06-15T13:00:00+00:00"));
        assert_eq!(next("@every -1h", None, SATURDAY).as_deref(), Some("2024-06-15T12:00:01+00:00"));
    }

    #[test]
    fn the_expression_is_kept_as_given() {
        let s = Schedule::parse("  0 2 * * sun ", Some(Tz::Europe__Paris)).expect("parses");
        assert_eq!(s.expression(), "0 2 * * sun");
        assert_eq!(s.to_string(), "0 2 * * sun");
        assert_eq!(s.zone(), Tz::Europe__Paris);
        assert_eq!(Schedule::parse("CRON_TZ=Asia/Tokyo @daily", None).expect("parses").zone(), Tz::Asia__Tokyo);
    }

    #[test]
    fn time_zones_are_checked_as_the_api_server_checks_timezone() {
        for good in ["UTC", "Etc/UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "America/Port-au-Prince", "Etc/GMT+5", "EST5EDT"] {
            assert!(parse_zone(good).is_ok(), "{good}");
        }
        for (bad, fragment) in [
            ("Europe/Pariss", "unknown time zone Europe/Pariss"),
            ("europe/paris", "unknown time zone"),
            ("Local", "Local is not an explicit time zone"),
            ("local", "Local is not an explicit time zone"),
            ("Europe/../Paris", "unknown time zone"),
            ("/Europe/Paris", "unknown time zone"),
            ("Europe/Paris ", "unknown time zone"),
            ("America/Argentina_Buenos_Aires", "unknown time zone"),
            ("+01:00", "unknown time zone"),
            ("", "empty"),
        ] {
            let e = parse_zone(bad).expect_err(bad);
            assert!(e.contains(fragment), "{bad:?}: {e}");
        }
    }

    #[test]
    fn go_durations_parse_as_go_parses_them() {
        let cases: &[(&str, Option<i128>)] = &[
            ("0", Some(0)),
            ("1h", Some(3_600_000_000_000)),
            ("1h30m", Some(5_400_000_000_000)),
            ("1.5h", Some(5_400_000_000_000)),
            (".5s", Some(500_000_000)),
            ("1.s", Some(1_000_000_000)),
            ("-2m", Some(-120_000_000_000)),
            ("+3s", Some(3_000_000_000)),
            ("10us", Some(10_000)),
            ("10\u{b5}s", Some(10_000)),
            ("10\u{3bc}s", Some(10_000)),
            ("2562047h", Some(9_223_369_200_000_000_000)),
            ("2562048h", None),
            ("", None),
            ("-", None),
            (".s", None),
            ("1", None),
            ("1x", None),
            ("h", None),
        ];
        for (text, expected) in cases {
            assert_eq!(go_duration(text).ok(), *expected, "{text:?}");
        }
    }
}
