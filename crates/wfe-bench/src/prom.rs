//! Just enough of the Prometheus text format: samples, sums by a key, differences.

use std::collections::BTreeMap;

/// Labels of a sample.
pub type Labels = BTreeMap<String, String>;
/// Values by key.
pub type Counts = BTreeMap<String, f64>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

fn parse_labels(text: &str) -> Option<Labels> {
    let mut labels = Labels::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        chars.next()?; // '='
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

/// Parses one line; `None` for comments, blanks and anything malformed.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Labels::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Sums the samples of `name` by `key(labels)` (samples for which it answers `None` are skipped).
pub fn sum_by(text: &str, name: &str, key: impl Fn(&Labels) -> Option<String>) -> Counts {
    let mut out = Counts::new();
    for s in text.lines().filter_map(parse_line) {
        if s.name != name {
            continue;
        }
        if let Some(k) = key(&s.labels) {
            *out.entry(k).or_default() += s.value;
        }
    }
    out
}

/// `after - before`, keeping only what grew.
pub fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or_default();
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// A label, or "".
pub fn label<'a>(labels: &'a Labels, key: &str) -> &'a str {
    labels.get(key).map(String::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples() {
        let s = parse_line(
            r#"workflowexecution_kube_api_requests_total{resource="jobs",verb="get"} 12"#,
        )
        .unwrap();
        assert_eq!(s.name, "workflowexecution_kube_api_requests_total");
        assert_eq!(label(&s.labels, "verb"), "get");
        assert_eq!(s.value, 12.0);
        let s = parse_line(r#"x{a="1,2",b="q\"x"} 3.5e-1 1700000000"#).unwrap();
        assert_eq!(label(&s.labels, "a"), "1,2");
        assert_eq!(label(&s.labels, "b"), "q\"x");
        assert_eq!(s.value, 0.35);
        assert_eq!(parse_line("up 1").unwrap().value, 1.0);
        assert!(parse_line("# HELP x y").is_none());
    }

    #[test]
    fn sums_and_differences() {
        let text = "m{verb=\"get\",r=\"a\"} 1\nm{verb=\"get\",r=\"b\"} 2\nm{verb=\"list\",r=\"a\"} 4\nn{verb=\"get\"} 9\n";
        let by_verb = sum_by(text, "m", |l| Some(label(l, "verb").to_string()));
        assert_eq!(by_verb["get"], 3.0);
        assert_eq!(by_verb["list"], 4.0);
        let before = Counts::from([("get".to_string(), 1.0), ("list".to_string(), 4.0)]);
        assert_eq!(
            delta(&before, &by_verb),
            Counts::from([("get".to_string(), 2.0)])
        );
    }
}
