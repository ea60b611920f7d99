//! Row steps: their config shape, and their compiled form that runs on typed rows.
//!
//! Steps are compiled against the column layout (names and types) once per object, so at run
//! time a row is a `Vec<Value>` addressed by index and a step never looks up a name.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::Deserialize;

use super::enrich::{EnrichPlan, EnrichStep};
use super::value::{ColType, Parser, Value};
use crate::error::{Error, Result};

/// One step of `steps`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Keep only rows matching a condition.
    Filter(Cond),
    /// Replace whole values of a string column by a map; other values are kept.
    Replace(ReplaceStep),
    /// Join columns as text into one column (null renders as the empty string).
    Concat(ConcatStep),
    /// Keep these columns, in this order.
    Select(Vec<String>),
    /// Rename columns: `{"old": "new"}`.
    Rename(BTreeMap<String, String>),
    /// Convert a column to another type; a value that does not convert quarantines the row.
    Cast(CastStep),
    /// Days from one date to another, as an int column.
    DaysBetween(DaysBetweenStep),
    /// Merge fields returned by an HTTP service for batches of rows (at most one per
    /// pipeline).
    Enrich(EnrichStep),
}

/// A filter condition.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cond {
    /// Every condition holds (true when empty).
    All(Vec<Cond>),
    /// At least one holds (false when empty).
    Any(Vec<Cond>),
    /// The condition does not hold.
    Not(Box<Cond>),
    /// Column equals value.
    Eq(Compare),
    /// Column differs from value (a null matches neither `eq` nor `ne`).
    Ne(Compare),
    /// Column < value.
    Lt(Compare),
    /// Column <= value.
    Le(Compare),
    /// Column > value.
    Gt(Compare),
    /// Column >= value.
    Ge(Compare),
    /// Column equals one of the values.
    In(InList),
    /// Column is null.
    IsNull(ColumnRef),
}

/// `{"column": ..., "value": ...}`: the value is read as the column's type (a date in the
/// column's format or `YYYY-MM-DD`).
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    /// Column name.
    pub column: String,
    /// Constant compared with.
    pub value: serde_json::Value,
}

/// `{"column": ..., "values": [...]}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InList {
    /// Column name.
    pub column: String,
    /// Constants.
    pub values: Vec<serde_json::Value>,
}

/// `{"column": ...}`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnRef {
    /// Column name.
    pub column: String,
}

/// `replace`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceStep {
    /// A string column.
    pub column: String,
    /// Whole-value replacements.
    pub map: BTreeMap<String, String>,
}

/// `concat`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatStep {
    /// The new (or replaced) string column.
    pub into: String,
    /// Columns joined, in order.
    pub columns: Vec<String>,
    /// Separator. Default empty.
    #[serde(default)]
    pub sep: String,
}

/// `cast`.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CastStep {
    /// The column converted in place.
    pub column: String,
    /// The new type.
    #[serde(rename = "type")]
    pub ty: ColType,
    /// chrono format: to parse text into a date or timestamp, or to render one as a string.
    #[serde(default)]
    pub format: Option<String>,
}

/// `days_between`: `to − from` in days.
#[derive(Debug, Clone, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DaysBetweenStep {
    /// The new (or replaced) int column.
    pub into: String,
    /// Start date column (date, timestamp or string).
    pub from: String,
    /// End date column (date, timestamp or string).
    pub to: String,
    /// chrono format of string columns. Default `%Y-%m-%d`.
    #[serde(default)]
    pub format: Option<String>,
    /// The value when either date is null or does not parse: null (default) or an integer.
    #[serde(default)]
    pub otherwise: Option<i64>,
}

/// Why a row was set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// The column at fault, when there is one.
    pub column: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// A column layout: names and types, in row order.
pub type Layout = Vec<(String, ColType)>;

#[derive(Debug, Clone)]
enum Op {
    Filter(CCond),
    Replace {
        idx: usize,
        map: HashMap<String, String>,
    },
    Concat {
        idxs: Vec<usize>,
        sep: String,
        into: Option<usize>,
    },
    Select(Vec<usize>),
    Cast {
        idx: usize,
        name: String,
        parser: Parser,
    },
    DaysBetween {
        from: usize,
        to: usize,
        format: String,
        otherwise: Value,
        into: Option<usize>,
    },
    /// Rows stop here to be batched; the rest runs after the answer is merged.
    Enrich,
}

#[derive(Debug, Clone)]
enum CCond {
    All(Vec<CCond>),
    Any(Vec<CCond>),
    Not(Box<CCond>),
    Cmp(usize, CmpOp, Value),
    In(usize, Vec<Value>),
    IsNull(usize),
}

#[derive(Debug, Clone, Copy)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Steps compiled against a layout.
#[derive(Debug, Clone)]
pub struct Program {
    ops: Vec<Op>,
    output: Layout,
    needed: Vec<bool>,
    enrich: Option<(usize, EnrichPlan)>,
}

/// What happened to a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It goes to the output.
    Keep,
    /// A filter dropped it.
    Filtered,
    /// A step failed on it: it goes to the quarantine.
    Bad(RowError),
}

impl Program {
    /// The output columns.
    pub fn output(&self) -> &Layout {
        &self.output
    }

    /// For each input column, whether any step or the output uses it. Unused columns need
    /// not be materialised (they are still type-checked when declared in the schema).
    pub fn needed(&self) -> &[bool] {
        &self.needed
    }

    /// The enrich step, when the pipeline has one.
    pub fn enrich(&self) -> Option<&EnrichPlan> {
        self.enrich.as_ref().map(|(_, p)| p)
    }

    /// Runs the steps on `row` (laid out as the input layout); on `Keep` the row is laid out
    /// as [`Program::output`] — or, with an enrich step, as the enrich step expects it, to be
    /// finished by [`Program::apply_after_enrich`] once merged.
    pub fn apply(&self, row: &mut Vec<Value>) -> Outcome {
        let end = self.enrich.as_ref().map_or(self.ops.len(), |(i, _)| *i);
        self.run(&self.ops[..end], row)
    }

    /// Runs the steps after the enrich step on a merged row.
    pub fn apply_after_enrich(&self, row: &mut Vec<Value>) -> Outcome {
        let start = self.enrich.as_ref().map_or(self.ops.len(), |(i, _)| *i + 1);
        self.run(&self.ops[start..], row)
    }

    fn run(&self, ops: &[Op], row: &mut Vec<Value>) -> Outcome {
        for op in ops {
            match op {
                Op::Enrich => {}
                Op::Filter(c) => {
                    if !eval(c, row) {
                        return Outcome::Filtered;
                    }
                }
                Op::Replace { idx, map } => {
                    if let Value::Str(s) = &row[*idx]
                        && let Some(to) = map.get(s.as_str())
                    {
                        row[*idx] = Value::Str(to.clone());
                    }
                }
                Op::Concat { idxs, sep, into } => {
                    let mut s = String::new();
                    for (n, i) in idxs.iter().enumerate() {
                        if n > 0 {
                            s.push_str(sep);
                        }
                        row[*i].render(&mut s);
                    }
                    put(row, *into, Value::Str(s));
                }
                Op::Select(idxs) => {
                    let mut taken: Vec<Value> = Vec::with_capacity(idxs.len());
                    for (n, i) in idxs.iter().enumerate() {
                        // A column selected twice is cloned from where the first copy went.
                        match idxs[..n].iter().position(|j| j == i) {
                            Some(first) => taken.push(taken[first].clone()),
                            None => taken.push(std::mem::take(&mut row[*i])),
                        }
                    }
                    *row = taken;
                }
                Op::Cast { idx, name, parser } => {
                    let v = std::mem::take(&mut row[*idx]);
                    match parser.convert(v) {
                        Ok(v) => row[*idx] = v,
                        Err(reason) => {
                            return Outcome::Bad(RowError {
                                column: Some(name.clone()),
                                reason: format!("cast to {}: {reason}", parser.ty().name()),
                            });
                        }
                    }
                }
                Op::DaysBetween {
                    from,
                    to,
                    format,
                    otherwise,
                    into,
                } => {
                    let v = match (as_date(&row[*from], format), as_date(&row[*to], format)) {
                        (Some(a), Some(b)) => Value::Int((b - a).num_days()),
                        _ => otherwise.clone(),
                    };
                    put(row, *into, v);
                }
            }
        }
        Outcome::Keep
    }
}

fn put(row: &mut Vec<Value>, into: Option<usize>, v: Value) {
    match into {
        Some(i) => row[i] = v,
        None => row.push(v),
    }
}

fn as_date(v: &Value, format: &str) -> Option<NaiveDate> {
    match v {
        Value::Date(d) => Some(*d),
        Value::Timestamp(t) => Some(t.date_naive()),
        Value::Str(s) => NaiveDate::parse_from_str(s.trim(), format).ok(),
        _ => None,
    }
}

fn eval(c: &CCond, row: &[Value]) -> bool {
    use std::cmp::Ordering::*;
    match c {
        CCond::All(cs) => cs.iter().all(|c| eval(c, row)),
        CCond::Any(cs) => cs.iter().any(|c| eval(c, row)),
        CCond::Not(c) => !eval(c, row),
        CCond::IsNull(i) => row[*i].is_null(),
        CCond::In(i, values) => values.iter().any(|v| row[*i].compare(v) == Some(Equal)),
        CCond::Cmp(i, op, v) => match row[*i].compare(v) {
            None => false,
            Some(ord) => match op {
                CmpOp::Eq => ord == Equal,
                CmpOp::Ne => ord != Equal,
                CmpOp::Lt => ord == Less,
                CmpOp::Le => ord != Greater,
                CmpOp::Gt => ord == Greater,
                CmpOp::Ge => ord != Less,
            },
        },
    }
}

struct Compiler {
    layout: Layout,
    /// For each current column, the input column it still is (untouched or renamed).
    origin: Vec<Option<usize>>,
    needed: Vec<bool>,
    tracking: bool,
    lenient: bool,
}

impl Compiler {
    fn find(&mut self, at: &str, name: &str) -> Result<usize> {
        if let Some(i) = self.layout.iter().position(|(n, _)| n == name) {
            if self.tracking
                && let Some(o) = self.origin[i]
            {
                self.needed[o] = true;
            }
            return Ok(i);
        }
        if self.lenient {
            // A CSV column not in the schema: it passes through as a string.
            self.layout.push((name.to_owned(), ColType::String));
            self.origin.push(None);
            return Ok(self.layout.len() - 1);
        }
        let known: Vec<&str> = self.layout.iter().map(|(n, _)| n.as_str()).collect();
        Err(Error::spec(format!(
            "{at}: unknown column {name:?} (columns at this step: {known:?})"
        )))
    }

    fn target(&mut self, name: &str, ty: ColType) -> Option<usize> {
        match self.layout.iter().position(|(n, _)| n == name) {
            Some(i) => {
                self.layout[i].1 = ty;
                self.origin[i] = None;
                Some(i)
            }
            None => {
                self.layout.push((name.to_owned(), ty));
                self.origin.push(None);
                None
            }
        }
    }

    fn cond(&mut self, at: &str, c: &Cond) -> Result<CCond> {
        let constant = |this: &Self, at: &str, idx: usize, v: &serde_json::Value| {
            let (name, ty) = &this.layout[idx];
            if v.is_null() {
                return Err(Error::spec(format!(
                    "{at}: value is null; use {{\"is_null\": {{\"column\": {name:?}}}}}"
                )));
            }
            // Dates and timestamps are given in ISO form whatever the column's input format.
            Parser::new(*ty, None)
                .from_json(v)
                .map_err(|e| Error::spec(format!("{at}: column {name:?} is {}: {e}", ty.name())))
        };
        Ok(match c {
            Cond::All(cs) => CCond::All(
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| self.cond(&format!("{at}.all[{i}]"), c))
                    .collect::<Result<_>>()?,
            ),
            Cond::Any(cs) => CCond::Any(
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| self.cond(&format!("{at}.any[{i}]"), c))
                    .collect::<Result<_>>()?,
            ),
            Cond::Not(c) => CCond::Not(Box::new(self.cond(&format!("{at}.not"), c)?)),
            Cond::IsNull(r) => CCond::IsNull(self.find(&format!("{at}.is_null"), &r.column)?),
            Cond::In(l) => {
                let at = format!("{at}.in");
                let idx = self.find(&at, &l.column)?;
                let values = l
                    .values
                    .iter()
                    .map(|v| constant(self, &at, idx, v))
                    .collect::<Result<_>>()?;
                CCond::In(idx, values)
            }
            Cond::Eq(x) | Cond::Ne(x) | Cond::Lt(x) | Cond::Le(x) | Cond::Gt(x) | Cond::Ge(x) => {
                let (name, op) = match c {
                    Cond::Eq(_) => ("eq", CmpOp::Eq),
                    Cond::Ne(_) => ("ne", CmpOp::Ne),
                    Cond::Lt(_) => ("lt", CmpOp::Lt),
                    Cond::Le(_) => ("le", CmpOp::Le),
                    Cond::Gt(_) => ("gt", CmpOp::Gt),
                    _ => ("ge", CmpOp::Ge),
                };
                let at = format!("{at}.{name}");
                let idx = self.find(&at, &x.column)?;
                CCond::Cmp(idx, op, constant(self, &at, idx, &x.value)?)
            }
        })
    }
}

/// One helper per step kind: each gets the step's config path (`steps[n]`), checks the step
/// against the columns at that point, and updates them as the step will at run time.
impl Compiler {
    /// What is sent to the service and where its fields land.
    fn enrich_plan(&mut self, at: &str, e: &EnrichStep) -> Result<EnrichPlan> {
        let send = match &e.columns {
            Some(cols) => cols
                .iter()
                .map(|col| Ok((col.clone(), self.find(at, col)?)))
                .collect::<Result<Vec<_>>>()?,
            None => {
                // Everything at this point is sent, so every column is used.
                if self.tracking {
                    for o in self.origin.iter().flatten() {
                        self.needed[*o] = true;
                    }
                }
                self.layout
                    .iter()
                    .enumerate()
                    .map(|(i, (name, _))| (name.clone(), i))
                    .collect()
            }
        };
        let fields = e
            .fields
            .iter()
            .map(|f| {
                let parser = Parser::new(f.ty, f.format.clone());
                (f.name.clone(), parser, self.target(&f.name, f.ty))
            })
            .collect();
        Ok(EnrichPlan {
            step: e.clone(),
            send,
            fields,
        })
    }

    fn replace(&mut self, at: &str, r: &ReplaceStep) -> Result<Op> {
        let at = format!("{at}.replace");
        let idx = self.find(&at, &r.column)?;
        let (name, ty) = &self.layout[idx];
        if *ty != ColType::String {
            return Err(Error::spec(format!(
                "{at}: column {name:?} is {}; replace works on strings (cast it first)",
                ty.name()
            )));
        }
        Ok(Op::Replace {
            idx,
            map: r.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    fn concat(&mut self, at: &str, s: &ConcatStep) -> Result<Op> {
        let at = format!("{at}.concat");
        if s.columns.is_empty() {
            return Err(Error::spec(format!("{at}: columns is empty")));
        }
        let idxs = s
            .columns
            .iter()
            .map(|col| self.find(&at, col))
            .collect::<Result<Vec<_>>>()?;
        let into = self.target(&s.into, ColType::String);
        Ok(Op::Concat {
            idxs,
            sep: s.sep.clone(),
            into,
        })
    }

    fn select(&mut self, at: &str, cols: &[String]) -> Result<Op> {
        let at = format!("{at}.select");
        if cols.is_empty() {
            return Err(Error::spec(format!("{at}: no columns")));
        }
        let mut idxs = Vec::with_capacity(cols.len());
        for (i, col) in cols.iter().enumerate() {
            if cols[..i].contains(col) {
                return Err(Error::spec(format!("{at}: column {col:?} selected twice")));
            }
            idxs.push(self.find(&at, col)?);
        }
        self.layout = idxs.iter().map(|i| self.layout[*i].clone()).collect();
        self.origin = idxs.iter().map(|i| self.origin[*i]).collect();
        // Nothing outside the selection can be used any more.
        self.tracking = false;
        Ok(Op::Select(idxs))
    }

    /// Renaming only changes the layout: rows are addressed by index, so it needs no op.
    fn rename(&mut self, at: &str, map: &BTreeMap<String, String>) -> Result<()> {
        let at = format!("{at}.rename");
        // Every source column is resolved before the layout is copied: with CSV input `find`
        // appends a column the schema does not declare, which the copy must include.
        let idxs = map
            .iter()
            .map(|(from, to)| Ok((self.find(&at, from)?, to)))
            .collect::<Result<Vec<_>>>()?;
        let mut renamed = self.layout.clone();
        for (idx, to) in idxs {
            renamed[idx].0 = to.clone();
        }
        for (i, (name, _)) in renamed.iter().enumerate() {
            if renamed[..i].iter().any(|(n, _)| n == name) {
                return Err(Error::spec(format!(
                    "{at}: two columns would be named {name:?}"
                )));
            }
        }
        self.layout = renamed;
        Ok(())
    }

    fn cast(&mut self, at: &str, s: &CastStep) -> Result<Op> {
        let at = format!("{at}.cast");
        let idx = self.find(&at, &s.column)?;
        let parser = Parser::new(s.ty, s.format.clone());
        parser
            .check_format()
            .and_then(|()| parser.check_render(self.layout[idx].1))
            .map_err(|e| Error::spec(format!("{at}: {e}")))?;
        self.layout[idx].1 = s.ty;
        Ok(Op::Cast {
            idx,
            name: s.column.clone(),
            parser,
        })
    }

    fn days_between(&mut self, at: &str, s: &DaysBetweenStep) -> Result<Op> {
        let at = format!("{at}.days_between");
        let from = self.find(&at, &s.from)?;
        let to = self.find(&at, &s.to)?;
        for i in [from, to] {
            let (name, ty) = &self.layout[i];
            if !matches!(ty, ColType::Date | ColType::Timestamp | ColType::String) {
                return Err(Error::spec(format!(
                    "{at}: column {name:?} is {}, not a date, timestamp or string",
                    ty.name()
                )));
            }
        }
        let format = s.format.clone().unwrap_or_else(|| "%Y-%m-%d".to_owned());
        Parser::new(ColType::Date, Some(format.clone()))
            .check_format()
            .map_err(|e| Error::spec(format!("{at}: {e}")))?;
        let into = self.target(&s.into, ColType::Int);
        Ok(Op::DaysBetween {
            from,
            to,
            format,
            otherwise: s.otherwise.map_or(Value::Null, Value::Int),
            into,
        })
    }
}

/// Compiles `steps` against the input `layout`. With `lenient`, a column the layout does not
/// have is taken to be a string column of the file (CSV columns outside the schema), so the
/// config can be checked before any header is seen; without it, it is an error naming the
/// step and the columns available.
pub fn compile(steps: &[Step], layout: &Layout, lenient: bool) -> Result<Program> {
    let mut c = Compiler {
        layout: layout.clone(),
        origin: (0..layout.len()).map(Some).collect(),
        needed: vec![false; layout.len()],
        tracking: true,
        lenient,
    };
    let mut ops = Vec::with_capacity(steps.len());
    let mut enrich = None;
    for (n, step) in steps.iter().enumerate() {
        let at = format!("steps[{n}]");
        match step {
            Step::Enrich(e) => {
                let at = format!("{at}.enrich");
                e.validate(&at)?;
                if enrich.is_some() {
                    return Err(Error::spec(format!(
                        "{at}: a pipeline has at most one enrich step"
                    )));
                }
                enrich = Some((ops.len(), c.enrich_plan(&at, e)?));
                ops.push(Op::Enrich);
            }
            Step::Filter(cond) => ops.push(Op::Filter(c.cond(&format!("{at}.filter"), cond)?)),
            Step::Replace(r) => ops.push(c.replace(&at, r)?),
            Step::Concat(s) => ops.push(c.concat(&at, s)?),
            Step::Select(cols) => ops.push(c.select(&at, cols)?),
            Step::Rename(map) => c.rename(&at, map)?,
            Step::Cast(s) => ops.push(c.cast(&at, s)?),
            Step::DaysBetween(s) => ops.push(c.days_between(&at, s)?),
        }
    }
    let mut needed = c.needed;
    if c.tracking {
        // No select: every input column reaches the output.
        needed.iter_mut().for_each(|n| *n = true);
    } else {
        needed.resize(layout.len(), false);
    }
    Ok(Program {
        ops,
        output: c.layout,
        needed,
        enrich,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps(v: serde_json::Value) -> Vec<Step> {
        serde_json::from_value(v).unwrap()
    }

    fn layout() -> Layout {
        vec![
            ("state".into(), ColType::String),
            ("make".into(), ColType::String),
            ("agency".into(), ColType::String),
            ("house".into(), ColType::String),
            ("street".into(), ColType::String),
            ("issued".into(), ColType::Date),
            ("expires".into(), ColType::String),
            ("fine".into(), ColType::Int),
        ]
    }

    fn row(state: &str, make: &str, agency: &str, house: Option<&str>, fine: i64) -> Vec<Value> {
        vec![
            Value::Str(state.into()),
            Value::Str(make.into()),
            Value::Str(agency.into()),
            house.map_or(Value::Null, |h| Value::Str(h.into())),
            Value::Str("Main St".into()),
            Value::Date(NaiveDate::from_ymd_opt(2024, 6, 1).unwrap()),
            Value::Str("20240611".into()),
            Value::Int(fine),
        ]
    }

    fn texts(r: &[Value]) -> Vec<String> {
        r.iter().map(Value::to_text).collect()
    }

    #[test]
    fn the_seed_steps() {
        let p = compile(
            &steps(json!([
                {"filter": {"all": [{"eq": {"column": "state", "value": "NJ"}},
                                    {"eq": {"column": "make", "value": "FORD"}}]}},
                {"replace": {"column": "agency", "map": {"P": "police"}}},
                {"concat": {"into": "address", "columns": ["house", "street", "state"], "sep": ", "}},
                {"select": ["make", "agency", "address"]},
                {"rename": {"make": "vehicle_make"}}
            ])),
            &layout(),
            false,
        )
        .unwrap();
        let names: Vec<&str> = p.output().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["vehicle_make", "agency", "address"]);
        assert_eq!(
            p.needed(),
            [true, true, true, true, true, false, false, false]
        );
        let mut r = row("NJ", "FORD", "P", None, 1);
        assert_eq!(p.apply(&mut r), Outcome::Keep);
        assert_eq!(texts(&r), ["FORD", "police", ", Main St, NJ"]);
        let mut r = row("NJ", "FORD", "T", Some("12"), 1);
        assert_eq!(p.apply(&mut r), Outcome::Keep);
        assert_eq!(texts(&r), ["FORD", "T", "12, Main St, NJ"]);
        assert_eq!(
            p.apply(&mut row("NY", "FORD", "P", None, 1)),
            Outcome::Filtered
        );
        assert_eq!(
            p.apply(&mut row("NJ", "BMW", "P", None, 1)),
            Outcome::Filtered
        );
    }

    #[test]
    fn comparisons_and_nulls() {
        let keep = |cond: serde_json::Value, r: Vec<Value>| {
            let p = compile(&steps(json!([{"filter": cond}])), &layout(), false).unwrap();
            let mut r = r;
            p.apply(&mut r) == Outcome::Keep
        };
        let r = || row("NJ", "FORD", "P", None, 65);
        assert!(keep(json!({"gt": {"column": "fine", "value": 50}}), r()));
        assert!(!keep(json!({"lt": {"column": "fine", "value": 50}}), r()));
        assert!(keep(
            json!({"ge": {"column": "issued", "value": "2024-06-01"}}),
            r()
        ));
        assert!(!keep(
            json!({"gt": {"column": "issued", "value": "2024-06-01"}}),
            r()
        ));
        assert!(keep(
            json!({"in": {"column": "state", "values": ["NY", "NJ"]}}),
            r()
        ));
        assert!(keep(json!({"is_null": {"column": "house"}}), r()));
        assert!(!keep(json!({"eq": {"column": "house", "value": "1"}}), r()));
        assert!(!keep(json!({"ne": {"column": "house", "value": "1"}}), r()));
        assert!(keep(
            json!({"not": {"eq": {"column": "house", "value": "1"}}}),
            r()
        ));
        assert!(keep(
            json!({"any": [{"eq": {"column": "state", "value": "NY"}},
                                    {"le": {"column": "fine", "value": 65}}]}),
            r()
        ));
        assert!(keep(json!({"all": []}), r()));
        assert!(!keep(json!({"any": []}), r()));
    }

    #[test]
    fn cast_and_days_between() {
        let p = compile(
            &steps(json!([
                {"days_between": {"into": "days", "from": "issued", "to": "expires", "format": "%Y%m%d", "otherwise": -1}},
                {"cast": {"column": "fine", "type": "float"}},
                {"cast": {"column": "issued", "type": "string", "format": "%d/%m/%Y"}},
                {"select": ["days", "fine", "issued"]}
            ])),
            &layout(),
            false,
        )
        .unwrap();
        let mut r = row("NJ", "FORD", "P", None, 65);
        assert_eq!(p.apply(&mut r), Outcome::Keep);
        assert_eq!(
            r,
            vec![
                Value::Int(10),
                Value::Float(65.0),
                Value::Str("01/06/2024".into())
            ]
        );
        let mut r = row("NJ", "FORD", "P", None, 65);
        r[6] = Value::Str("0".into());
        p.apply(&mut r);
        assert_eq!(r[0], Value::Int(-1));

        let p = compile(
            &steps(json!([{"cast": {"column": "house", "type": "int"}}])),
            &layout(),
            false,
        )
        .unwrap();
        let mut r = row("NJ", "FORD", "P", Some("12B"), 1);
        let Outcome::Bad(e) = p.apply(&mut r) else {
            panic!()
        };
        assert_eq!(e.column.as_deref(), Some("house"));
        assert!(e.reason.contains("\"12B\" is not an int"), "{}", e.reason);
    }

    #[test]
    fn compile_errors_name_the_step() {
        let e = |v: serde_json::Value| {
            compile(&steps(v), &layout(), false)
                .unwrap_err()
                .to_string()
        };
        let m = e(json!([{"select": ["make"]}, {"concat": {"into": "a", "columns": ["state"]}}]));
        assert!(
            m.contains("steps[1].concat: unknown column \"state\"") && m.contains("[\"make\"]"),
            "{m}"
        );
        let m = e(json!([{"filter": {"all": [{"eq": {"column": "fine", "value": "x"}}]}}]));
        assert!(
            m.contains("steps[0].filter.all[0].eq: column \"fine\" is int"),
            "{m}"
        );
        let m = e(json!([{"replace": {"column": "fine", "map": {}}}]));
        assert!(m.contains("cast it first"), "{m}");
        let m = e(json!([{"rename": {"make": "state"}}]));
        assert!(m.contains("two columns would be named \"state\""), "{m}");
        let m = e(json!([{"filter": {"eq": {"column": "state", "value": null}}}]));
        assert!(m.contains("is_null"), "{m}");
        // A date rendered with a time specifier cannot be; a timestamp can.
        let m = e(json!([{"cast": {"column": "issued", "type": "string", "format": "%H"}}]));
        assert!(
            m.contains("steps[0].cast") && m.contains("cannot render a date"),
            "{m}"
        );
        // Lenient compilation takes unknown names for pass-through CSV columns.
        assert!(compile(&steps(json!([{"select": ["Plate ID"]}])), &layout(), true).is_ok());
    }

    /// Found by the `pipeline` fuzz target: renaming a CSV column the schema does not declare
    /// indexed past the end of the layout copied before the column was added.
    #[test]
    fn renaming_an_undeclared_csv_column_is_not_a_panic() {
        let ops = compile(
            &steps(json!([{"rename": {"Plate ID": "plate"}}, {"select": ["plate", "make"]}])),
            &layout(),
            true,
        );
        assert!(ops.is_ok(), "{:?}", ops.err());
    }
}
