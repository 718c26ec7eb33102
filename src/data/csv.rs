//! Delimited text tables (optionally gzipped): one example per line, numeric
//! fields separated by a delimiter (comma or whitespace). A field may be
//! quoted as RFC 4180 writes it (`"a, b"`, a doubled `""` inside for a quote),
//! so that spreadsheet exports with commas in their column names load; a
//! quoted field must end on its own line.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use super::{classes_from_labels, read_maybe_gz, DataError, DataInfo, HostData};

/// Which file to read and which columns are features and target.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvSpec {
    pub path: PathBuf,
    pub target: ColumnRef,
    /// `None` = all columns other than the target, in file order.
    pub features: Option<Vec<ColumnRef>>,
    /// Whether the first line holds column names.
    pub header: bool,
    /// `None` = auto: comma if the first line has one, else whitespace.
    /// A whitespace character means "runs of whitespace".
    pub delimiter: Option<char>,
    /// Whether the target holds class ids (non-negative integers).
    pub classification: bool,
    /// The stated class count; `None` counts the labels.
    pub classes: Option<usize>,
}

/// A column, by header name or by 0-based position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnRef {
    Name(String),
    Index(usize),
}

/// Reads the whole file (tables are small) to count rows and resolve columns.
pub fn csv_info(spec: &CsvSpec) -> Result<DataInfo, DataError> {
    load_csv(spec).map(|data| data.info)
}

pub fn load_csv(spec: &CsvSpec) -> Result<HostData, DataError> {
    let bytes = read_maybe_gz(&spec.path)?;
    let text = as_text(&spec.path, &bytes)?;
    let header = if spec.header { Header::Yes } else { Header::No };
    let table = Table::parse(&spec.path, text, spec.delimiter, header)?;
    let target = table.resolve(&spec.target)?;
    let features = match &spec.features {
        Some(refs) => refs
            .iter()
            .map(|r| table.resolve(r))
            .collect::<Result<Vec<_>, _>>()?,
        None => (0..table.ncols).filter(|&c| c != target).collect(),
    };
    if features.contains(&target) {
        return Err(DataError::format(
            &spec.path,
            format!(
                "uses column `{}` both as the target and as a feature",
                table.column_name(target)
            ),
        ));
    }
    if features.is_empty() {
        return Err(DataError::format(
            &spec.path,
            "has no feature columns besides the target",
        ));
    }
    let y = table.columns(&[target])?;
    let classes = if spec.classification {
        Some(classes_from_labels(
            &spec.path,
            &format!("target column `{}`", table.column_name(target)),
            &y,
            spec.classes,
        )?)
    } else {
        None
    };
    let x = table.columns(&features)?;
    Ok(HostData {
        info: DataInfo {
            n: table.rows.len(),
            shape: vec![features.len()],
            classes,
            target_dim: 1,
        },
        x,
        y,
        flipped: Vec::new(),
    })
}

/// Two-file regression data: a features table and a target table with the same
/// number of rows. Delimiters and header lines are detected automatically;
/// a target table with `k` columns gives `target_dim = k`.
pub fn csv_pair_info(features: &Path, target: &Path) -> Result<DataInfo, DataError> {
    load_csv_pair(features, target).map(|data| data.info)
}

pub fn load_csv_pair(features: &Path, target: &Path) -> Result<HostData, DataError> {
    let feature_bytes = read_maybe_gz(features)?;
    let target_bytes = read_maybe_gz(target)?;
    pair_from_bytes(features, &feature_bytes, target, &target_bytes)
}

/// Builds a two-file dataset from (decompressed) file contents; the paths are
/// only used in error messages.
pub(super) fn pair_from_bytes(
    features: &Path,
    feature_bytes: &[u8],
    target: &Path,
    target_bytes: &[u8],
) -> Result<HostData, DataError> {
    let ftable = Table::parse(
        features,
        as_text(features, feature_bytes)?,
        None,
        Header::Auto,
    )?;
    let ttable = Table::parse(target, as_text(target, target_bytes)?, None, Header::Auto)?;
    if ftable.rows.len() != ttable.rows.len() {
        return Err(DataError::Mismatch {
            detail: format!(
                "`{}` has {} rows but `{}` has {} rows",
                features.display(),
                ftable.rows.len(),
                target.display(),
                ttable.rows.len()
            ),
        });
    }
    let all_features: Vec<usize> = (0..ftable.ncols).collect();
    let all_targets: Vec<usize> = (0..ttable.ncols).collect();
    Ok(HostData {
        info: DataInfo {
            n: ftable.rows.len(),
            shape: vec![ftable.ncols],
            classes: None,
            target_dim: ttable.ncols,
        },
        x: ftable.columns(&all_features)?,
        y: ttable.columns(&all_targets)?,
        flipped: Vec::new(),
    })
}

fn as_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        DataError::format(
            path,
            format!(
                "is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

#[derive(Clone, Copy, PartialEq)]
enum Header {
    Yes,
    No,
    /// A first line with any non-numeric field is a header.
    Auto,
}

#[derive(Clone, Copy)]
enum Delimiter {
    Char(char),
    Whitespace,
}

impl Delimiter {
    fn is_delimiter(self, ch: char) -> bool {
        match self {
            Delimiter::Char(c) => ch == c,
            Delimiter::Whitespace => ch.is_whitespace(),
        }
    }

    /// The fields of one line, quotes removed. `Err` says what is wrong with
    /// the line's quoting.
    fn split(self, line: &str) -> Result<Vec<Cow<'_, str>>, &'static str> {
        let mut fields = Vec::new();
        let mut rest = line;
        if let Delimiter::Whitespace = self {
            rest = rest.trim_start();
            if rest.is_empty() {
                return Ok(fields);
            }
        }
        loop {
            // Spaces around a field are not part of it (a tab or space
            // delimiter has been taken as "whitespace" before this).
            let field_start = rest.trim_start_matches([' ', '\t']);
            let (field, after) = if let Some(quoted) = field_start.strip_prefix('"') {
                let (text, after) = unquote(quoted)?;
                let after = match self {
                    Delimiter::Char(_) => after.trim_start_matches([' ', '\t']),
                    Delimiter::Whitespace => after,
                };
                match after.chars().next() {
                    Some(ch) if !self.is_delimiter(ch) => {
                        return Err("has text after a closing quote");
                    }
                    _ => (text, after),
                }
            } else {
                let end = rest.find(|ch| self.is_delimiter(ch)).unwrap_or(rest.len());
                (Cow::Borrowed(rest[..end].trim()), &rest[end..])
            };
            fields.push(field);
            let mut chars = after.chars();
            match chars.next() {
                None => return Ok(fields),
                Some(_) => {
                    rest = chars.as_str();
                    if let Delimiter::Whitespace = self {
                        rest = rest.trim_start();
                        if rest.is_empty() {
                            return Ok(fields);
                        }
                    }
                }
            }
        }
    }

    fn describe(self) -> String {
        match self {
            Delimiter::Char(',') => "comma".to_string(),
            Delimiter::Char(c) => format!("`{}`", c.escape_default()),
            Delimiter::Whitespace => "whitespace".to_string(),
        }
    }
}

/// The text of a quoted field that starts right after its opening quote,
/// and what follows the closing one.
fn unquote(quoted: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let mut text = String::new();
    let mut from = 0;
    loop {
        let Some(at) = quoted[from..].find('"').map(|i| from + i) else {
            return Err("has a quote that is not closed on its line");
        };
        if quoted[at + 1..].starts_with('"') {
            text.push_str(&quoted[from..=at]);
            from = at + 2;
        } else if text.is_empty() && from == 0 {
            return Ok((Cow::Borrowed(&quoted[..at]), &quoted[at + 1..]));
        } else {
            text.push_str(&quoted[from..at]);
            return Ok((Cow::Owned(text), &quoted[at + 1..]));
        }
    }
}

struct Table<'a> {
    path: &'a Path,
    names: Option<Vec<String>>,
    /// Data rows with their 1-based line numbers.
    rows: Vec<(usize, Vec<Cow<'a, str>>)>,
    ncols: usize,
}

impl<'a> Table<'a> {
    fn parse(
        path: &'a Path,
        text: &'a str,
        delimiter: Option<char>,
        header: Header,
    ) -> Result<Self, DataError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line))
            .filter(|(_, line)| !line.trim().is_empty())
            .peekable();
        let Some(&(_, first)) = lines.peek() else {
            return Err(DataError::format(path, "is empty"));
        };
        let delimiter = match delimiter {
            Some(c) if c.is_whitespace() => Delimiter::Whitespace,
            Some(c) => Delimiter::Char(c),
            None if first.contains(',') => Delimiter::Char(','),
            None => Delimiter::Whitespace,
        };
        let quoting = |line_no: usize, what: &str| {
            DataError::format(path, format!("{what} on line {line_no}"))
        };
        let first_line_no = lines.peek().map_or(1, |&(i, _)| i);
        let first_fields = delimiter
            .split(first)
            .map_err(|what| quoting(first_line_no, what))?;
        let has_header = match header {
            Header::Yes => true,
            Header::No => false,
            Header::Auto => first_fields.iter().any(|f| f.parse::<f32>().is_err()),
        };
        let names = if has_header {
            lines.next();
            Some(
                first_fields
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>(),
            )
        } else {
            None
        };
        let ncols = first_fields.len();
        let mut rows = Vec::new();
        for (line_no, line) in lines {
            let fields = delimiter
                .split(line)
                .map_err(|what| quoting(line_no, what))?;
            if fields.len() != ncols {
                let reference = if has_header { "header" } else { "first line" };
                return Err(DataError::format(
                    path,
                    format!(
                        "has {} fields on line {line_no} but {ncols} on the {reference} ({} delimited)",
                        fields.len(),
                        delimiter.describe()
                    ),
                ));
            }
            rows.push((line_no, fields));
        }
        if rows.is_empty() {
            return Err(DataError::format(path, "has no data rows"));
        }
        Ok(Table {
            path,
            names,
            rows,
            ncols,
        })
    }

    fn available(&self) -> Vec<String> {
        match &self.names {
            Some(names) => names.clone(),
            None => (0..self.ncols).map(|i| i.to_string()).collect(),
        }
    }

    fn column_name(&self, index: usize) -> String {
        match &self.names {
            Some(names) => names[index].clone(),
            None => index.to_string(),
        }
    }

    fn resolve(&self, column: &ColumnRef) -> Result<usize, DataError> {
        let found = match column {
            ColumnRef::Index(i) => (*i < self.ncols).then_some(*i),
            ColumnRef::Name(name) => match &self.names {
                Some(names) => names.iter().position(|n| n == name.trim()),
                // Without a header, a name can only be a column number.
                None => name
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&i| i < self.ncols),
            },
        };
        found.ok_or_else(|| DataError::MissingColumn {
            path: self.path.to_path_buf(),
            column: match column {
                ColumnRef::Index(i) => i.to_string(),
                ColumnRef::Name(name) => name.clone(),
            },
            available: self.available(),
        })
    }

    /// The given columns of every row, row-major, parsed as `f32`.
    fn columns(&self, columns: &[usize]) -> Result<Vec<f32>, DataError> {
        let mut out = Vec::with_capacity(self.rows.len() * columns.len());
        for (line_no, fields) in &self.rows {
            for &c in columns {
                let field = &fields[c];
                let value = field.parse::<f32>().map_err(|_| {
                    DataError::format(
                        self.path,
                        format!(
                            "has `{field}` in column `{}` on line {line_no}, which is not a number",
                            self.column_name(c)
                        ),
                    )
                })?;
                // `nan` and `inf` parse as floats but are no data.
                if !value.is_finite() {
                    return Err(DataError::format(
                        self.path,
                        format!(
                            "has `{field}` in column `{}` on line {line_no}; every value must be a finite number",
                            self.column_name(c)
                        ),
                    ));
                }
                out.push(value);
            }
        }
        Ok(out)
    }
}
