//! Cron schedules as Kubernetes reads them (`robfig/cron`'s standard
//! parser): five fields — minute, hour, day of month, month, day of week —
//! each `*`, `?`, a number or name, a range `a-b`, a step `*/n`, `a-b/n`
//! or `a/n` (from `a` to the end), or a list of these; or one of the
//! descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly`.
//!
//! As in cron, when both the day of month and the day of week are
//! restricted a day matching either runs; when either is `*`, both must
//! match. Times are minutes of UTC.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};

/// How far [`Schedule::next`] and [`Schedule::previous`] look (`0 0 30 2 *`
/// never comes).
const HORIZON_DAYS: i64 = 366 * 5;

/// Why a schedule does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("expected exactly 5 fields, found {found}: {schedule}")]
    Fields { found: usize, schedule: String },
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    #[error("failed to parse int from {0}")]
    Number(String),
    #[error("too many hyphens: {0}")]
    Hyphens(String),
    #[error("too many slashes: {0}")]
    Slashes(String),
    #[error("beginning of range ({start}) below minimum ({min}): {field}")]
    BelowMinimum { start: u32, min: u32, field: String },
    #[error("end of range ({end}) above maximum ({max}): {field}")]
    AboveMaximum { end: u32, max: u32, field: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {field}")]
    Backwards { start: u32, end: u32, field: String },
    #[error("step of range should be a positive number: {0}")]
    Step(String),
}

/// The values one field allows, and its names.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
/// Names start at the field's minimum.
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAYS: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// One field: a bit per allowed value, and whether it was a plain `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(self, value: u32) -> bool {
        self.bits & (1 << value) != 0
    }

    fn parse(text: &str, bounds: &Bounds) -> Result<Self, ScheduleError> {
        let mut field = Self {
            bits: 0,
            star: false,
        };
        for range in text.split(',') {
            let (bits, star) = range_bits(range, bounds)?;
            field.bits |= bits;
            field.star |= star;
        }
        Ok(field)
    }
}

fn number(text: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    if let Some(at) = bounds.names.iter().position(|n| *n == lower) {
        return Ok(bounds.min + at as u32);
    }
    text.parse()
        .map_err(|_| ScheduleError::Number(text.to_owned()))
}

/// The bits of one range of a field, and whether it is a star.
fn range_bits(text: &str, bounds: &Bounds) -> Result<(u64, bool), ScheduleError> {
    let mut parts = text.split('/');
    let range = parts.next().unwrap_or_default();
    let step = parts.next();
    if parts.next().is_some() {
        return Err(ScheduleError::Slashes(text.to_owned()));
    }
    let ends: Vec<&str> = range.split('-').collect();
    let (start, mut end, mut star) = match ends.as_slice() {
        ["*" | "?"] => (bounds.min, bounds.max, true),
        [single] => {
            let n = number(single, bounds)?;
            (n, n, false)
        }
        [low, high] => (number(low, bounds)?, number(high, bounds)?, false),
        _ => return Err(ScheduleError::Hyphens(text.to_owned())),
    };
    let step = match step {
        None => 1,
        Some(step) => {
            let step: u32 = step
                .parse()
                .map_err(|_| ScheduleError::Number(step.to_owned()))?;
            // `a/n` runs from `a` to the end.
            if ends.len() == 1 {
                end = bounds.max;
            }
            if step > 1 {
                star = false;
            }
            step
        }
    };
    let field = text.to_owned();
    if start < bounds.min {
        return Err(ScheduleError::BelowMinimum {
            start,
            min: bounds.min,
            field,
        });
    }
    if end > bounds.max {
        return Err(ScheduleError::AboveMaximum {
            end,
            max: bounds.max,
            field,
        });
    }
    if start > end {
        return Err(ScheduleError::Backwards { start, end, field });
    }
    if step == 0 {
        return Err(ScheduleError::Step(field));
    }
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0u64, |bits, v| bits | 1 << v);
    Ok((bits, star))
}

/// A parsed schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: Field,
    hours: Field,
    days: Field,
    months: Field,
    weekdays: Field,
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(ScheduleError::Descriptor(other.to_owned()));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minutes, hours, days, months, weekdays] = fields.as_slice() else {
            return Err(ScheduleError::Fields {
                found: fields.len(),
                schedule: text.to_owned(),
            });
        };
        Ok(Self {
            minutes: Field::parse(minutes, &MINUTES)?,
            hours: Field::parse(hours, &HOURS)?,
            days: Field::parse(days, &DAYS)?,
            months: Field::parse(months, &MONTHS)?,
            weekdays: Field::parse(weekdays, &WEEKDAYS)?,
        })
    }
}

impl Schedule {
    fn day_matches(&self, date: NaiveDate) -> bool {
        if !self.months.has(date.month()) {
            return false;
        }
        let day = self.days.has(date.day());
        let weekday = self.weekdays.has(date.weekday().num_days_from_sunday());
        if self.days.star || self.weekdays.star {
            day && weekday
        } else {
            day || weekday
        }
    }

    /// The first minute of `date` at or after `from` (hour, minute) that
    /// matches.
    fn first_in_day(&self, from: (u32, u32)) -> Option<(u32, u32)> {
        (from.0..24).filter(|h| self.hours.has(*h)).find_map(|h| {
            let start = if h == from.0 { from.1 } else { 0 };
            (start..60).find(|m| self.minutes.has(*m)).map(|m| (h, m))
        })
    }

    /// The last minute of a day at or before `to` (hour, minute) that matches.
    fn last_in_day(&self, to: (u32, u32)) -> Option<(u32, u32)> {
        (0..=to.0)
            .rev()
            .filter(|h| self.hours.has(*h))
            .find_map(|h| {
                let end = if h == to.0 { to.1 } else { 59 };
                (0..=end)
                    .rev()
                    .find(|m| self.minutes.has(*m))
                    .map(|m| (h, m))
            })
    }

    fn at(date: NaiveDate, (hour, minute): (u32, u32)) -> Option<DateTime<Utc>> {
        let time = NaiveTime::from_hms_opt(hour, minute, 0)?;
        Some(Utc.from_utc_datetime(&date.and_time(time)))
    }

    /// The first scheduled time strictly after `after`; `None` if there is
    /// none within five years.
    pub fn next(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut date = start.date_naive();
        let mut from = (start.hour(), start.minute());
        for _ in 0..HORIZON_DAYS {
            if self.day_matches(date)
                && let Some(time) = self.first_in_day(from)
            {
                return Self::at(date, time);
            }
            date = date.succ_opt()?;
            from = (0, 0);
        }
        None
    }

    /// The last scheduled time at or before `at`; `None` if there is none
    /// within five years.
    pub fn previous(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut date = at.date_naive();
        let mut to = (at.hour(), at.minute());
        for _ in 0..HORIZON_DAYS {
            if self.day_matches(date)
                && let Some(time) = self.last_in_day(to)
            {
                return Self::at(date, time);
            }
            date = date.pred_opt()?;
            to = (23, 59);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(schedule: &str, after: &str) -> String {
        let s: Schedule = schedule.parse().unwrap();
        s.next(utc(after)).unwrap().to_rfc3339()
    }

    #[test]
    fn next_times_follow_the_fields() {
        let cases = [
            (
                "* * * * *",
                "2024-05-01T10:00:30Z",
                "2024-05-01T10:01:00+00:00",
            ),
            (
                "*/15 * * * *",
                "2024-05-01T10:14:59Z",
                "2024-05-01T10:15:00+00:00",
            ),
            (
                "*/15 * * * *",
                "2024-05-01T10:15:00Z",
                "2024-05-01T10:30:00+00:00",
            ),
            (
                "0 0 * * *",
                "2024-05-01T10:00:00Z",
                "2024-05-02T00:00:00+00:00",
            ),
            (
                "30 6-16/4 * * 1-5",
                "2024-05-03T15:00:00Z",
                "2024-05-06T06:30:00+00:00",
            ),
            (
                "0 9 * JAN,jul MON",
                "2024-05-01T00:00:00Z",
                "2024-07-01T09:00:00+00:00",
            ),
            (
                "@monthly",
                "2024-01-31T12:00:00Z",
                "2024-02-01T00:00:00+00:00",
            ),
            (
                "@weekly",
                "2024-05-01T00:00:00Z",
                "2024-05-05T00:00:00+00:00",
            ),
            (
                "0 0 29 2 *",
                "2024-03-01T00:00:00Z",
                "2028-02-29T00:00:00+00:00",
            ),
            (
                "5/20 * * * *",
                "2024-05-01T10:46:00Z",
                "2024-05-01T11:05:00+00:00",
            ),
        ];
        for (schedule, after, expected) in cases {
            assert_eq!(next(schedule, after), expected, "{schedule} after {after}");
        }
    }

    #[test]
    fn a_restricted_day_of_month_or_week_either_matches() {
        // The 13th, and every Friday.
        let s: Schedule = "0 0 13 * 5".parse().unwrap();
        let mut t = utc("2024-09-01T00:00:00Z");
        let mut days = Vec::new();
        for _ in 0..5 {
            t = s.next(t).unwrap();
            days.push(t.day());
        }
        assert_eq!(days, [6, 13, 20, 27, 4]);
        // A star in one of them: both must match (`?` is a star too).
        let s: Schedule = "0 0 ? * 5".parse().unwrap();
        assert_eq!(s.next(utc("2024-09-01T00:00:00Z")).unwrap().day(), 6);
    }

    #[test]
    fn previous_is_the_last_time_at_or_before() {
        let s: Schedule = "*/10 * * * *".parse().unwrap();
        assert_eq!(
            s.previous(utc("2024-05-01T10:25:59Z")).unwrap(),
            utc("2024-05-01T10:20:00Z")
        );
        assert_eq!(
            s.previous(utc("2024-05-01T10:20:00Z")).unwrap(),
            utc("2024-05-01T10:20:00Z")
        );
        let s: Schedule = "0 12 * * *".parse().unwrap();
        assert_eq!(
            s.previous(utc("2024-05-01T11:00:00Z")).unwrap(),
            utc("2024-04-30T12:00:00Z")
        );
        let never: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(never.next(utc("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let error = |s: &str| s.parse::<Schedule>().unwrap_err().to_string();
        assert_eq!(
            error("* * * *"),
            "expected exactly 5 fields, found 4: * * * *"
        );
        assert_eq!(
            error("60 * * * *"),
            "end of range (60) above maximum (59): 60"
        );
        assert_eq!(
            error("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            error("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(error("x * * * *"), "failed to parse int from x");
        assert_eq!(error("1-2-3 * * * *"), "too many hyphens: 1-2-3");
        assert_eq!(
            error("@fortnightly"),
            "unrecognized descriptor: @fortnightly"
        );
        assert_eq!(error("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert!("@every 5m".parse::<Schedule>().is_err());
    }
}
