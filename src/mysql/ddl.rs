//! The replica's definition of a source table, made from the source's
//! `SHOW CREATE TABLE` text (MariaDB's or MySQL 8's).
//!
//! The replica holds the source's rows for the load to read. It mirrors
//! values; it does not enforce the source's rules again or compute its
//! values again. So it keeps:
//! - every column, with its type, character set, nullability, literal
//!   default and `AUTO_INCREMENT`;
//! - the primary key, and the secondary indexes, built after a full copy
//!   (a `UNIQUE` key becomes a plain index: see `relax_unique_keys`);
//! - the `CHECK (json_valid(…))` that marks a MariaDB `json` column;
//! - the engine (InnoDB, MyISAM or Aria; any other becomes InnoDB) and the
//!   default character set.
//!
//! And it leaves out:
//! - foreign keys: the copy fills tables one at a time, in any order;
//! - other CHECK constraints: the source checked every row it holds, and a
//!   MySQL 8 check may be `NOT ENFORCED` or call a function MariaDB lacks;
//! - generation expressions: a generated column (virtual or stored) is a
//!   plain column holding the source's value, so it cannot come out
//!   different on another server version;
//! - `INVISIBLE`: the copy names every column anyway;
//! - expression defaults, functional index parts and version comments
//!   (`SRID`, `WITH PARSER`, MySQL 8's invisible indexes);
//! - partitioning, system versioning, and table options other than the
//!   engine and character set.
//!
//! Triggers are not part of `SHOW CREATE TABLE`: the replica has none, so
//! the copy never runs a clinic's trigger a second time.
//!
//! A column policy reshapes it further: an excluded column, and every
//! secondary key on it, is left out; a hashed column becomes ASCII text
//! that holds the hash ([`hashed_type`]); a nulled one keeps its type and
//! takes NULL. Both are nullable, with no default.
//!
//! A collation the replica lacks (MySQL 8's `utf8mb4_0900_ai_ci` on
//! MariaDB) becomes its character set's binary `NO PAD` collation: two
//! values the source tells apart never collide in the replica's keys.

use crate::config::{Applied, Mask};
use crate::error::{Error, ErrorKind, Result};
use crate::mask::hashed_type;
use crate::schema::ident;

/// The replica's `CREATE TABLE` for a source table.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaDdl {
    /// The `CREATE TABLE` statement, without the secondary keys.
    pub create: String,
    /// Secondary keys to add once the table is full (`KEY … (…)`).
    pub deferred_keys: Vec<String>,
    /// Collations the replica lacked, and what it uses instead.
    pub notes: Vec<String>,
}

/// Makes the replica's definition of source table `table`, created under
/// the name `into`, from the source's `SHOW CREATE TABLE` text.
/// `has_collation` says whether the replica knows a collation; `policy`
/// is the table's column policy.
pub fn replica_ddl(
    show_create: &str,
    table: &str,
    into: &str,
    has_collation: &dyn Fn(&str) -> bool,
    policy: &Applied,
) -> Result<ReplicaDdl> {
    let not_plain = || {
        Error::new(
            ErrorKind::Schema,
            format!(
                "the source definition of `{table}` is not a plain table; exclude it or copy it by other means"
            ),
        )
    };
    let body = show_create
        .strip_prefix(&format!("CREATE TABLE {} ", ident::mysql(table)))
        .ok_or_else(not_plain)?;
    if !body.starts_with('(') {
        return Err(not_plain());
    }
    let close = closing(body, 0).ok_or_else(not_plain)?;
    let mut collations = Collations {
        has: has_collation,
        notes: Vec::new(),
    };
    let mut columns = Vec::new();
    let mut primary = None;
    let mut keys = Vec::new();
    for item in split_top(&body[1..close]) {
        let item = item.trim();
        let first = tokens(item)
            .first()
            .map(|t| t.text.to_ascii_uppercase())
            .unwrap_or_default();
        match first.as_str() {
            _ if item.starts_with('`') => {
                let name = first_identifier(item).unwrap_or_default();
                match policy.mask_of(&name) {
                    _ if policy.excludes(&name) => {}
                    Some(Mask::Hash) => columns.push(format!(
                        "{} {} CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL",
                        ident::mysql(&name),
                        hashed_type(&column_type(item))
                    )),
                    Some(Mask::Null) => columns.push(nullable(&column(item, &mut collations))),
                    Some(Mask::Year) | None => columns.push(column(item, &mut collations)),
                }
            }
            "PRIMARY" => primary = Some(without_comments(item)),
            "KEY" | "INDEX" | "UNIQUE" | "FULLTEXT" | "SPATIAL" | "VECTOR" => {
                keys.extend(secondary_key(item).filter(|key| {
                    !parts(key)
                        .iter()
                        .any(|p| first_identifier(p).is_some_and(|c| policy.excludes(&c)))
                }))
            }
            // Foreign keys, CHECK constraints, periods.
            "CONSTRAINT" | "FOREIGN" | "CHECK" | "PERIOD" => {}
            _ => return Err(not_plain()),
        }
    }
    let auto = columns
        .iter()
        .find(|c| has_word(c, "AUTO_INCREMENT"))
        .and_then(|c| first_identifier(c));
    let leading = |key: &str| parts(key).first().and_then(|p| first_identifier(p));
    let mut kept = columns;
    if let Some(p) = &primary {
        kept.push(p.clone());
    }
    if let Some(auto) = auto.filter(|a| primary.as_deref().and_then(leading).as_ref() != Some(a)) {
        // An auto-increment column must lead a key from the start.
        if let Some(at) = keys.iter().position(|k| leading(k).as_ref() == Some(&auto)) {
            kept.push(keys.remove(at));
        }
    }
    let options = table_options(&body[close + 1..], &mut collations);
    Ok(ReplicaDdl {
        create: format!(
            "CREATE TABLE {} (\n  {}\n){options}",
            ident::mysql(into),
            kept.join(",\n  ")
        ),
        deferred_keys: keys,
        notes: collations.notes,
    })
}

/// The replica's collation for a source one, with a note when it differs.
struct Collations<'a> {
    has: &'a dyn Fn(&str) -> bool,
    notes: Vec<String>,
}

impl Collations<'_> {
    /// The collation the replica uses for `name`; `None` leaves the
    /// character set's default.
    fn map(&mut self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        if (self.has)(&name) {
            return Some(name);
        }
        let charset = name.split('_').next().unwrap_or_default();
        let stand_in = [format!("{charset}_nopad_bin"), format!("{charset}_bin")]
            .into_iter()
            .find(|c| (self.has)(c));
        let note = format!(
            "the replica lacks collation {name}: its columns compare as {} there",
            stand_in
                .as_deref()
                .unwrap_or("their character set's default")
        );
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
        stand_in
    }
}

/// One column definition, its generation, checks, visibility, expression
/// default and version comments left out, and its collation mapped.
fn column(item: &str, collations: &mut Collations<'_>) -> String {
    let toks = tokens(item);
    let name = toks.first().map(|t| t.text).unwrap_or_default();
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut i = 1;
    while i < toks.len() {
        let word = toks[i].word();
        let next = |n: usize| toks.get(i + n);
        let cut = match word.as_deref() {
            Some("GENERATED")
                if next(1).and_then(Tok::word).as_deref() == Some("ALWAYS")
                    && next(2).and_then(Tok::word).as_deref() == Some("AS") =>
            {
                match next(3) {
                    Some(t) if t.kind == Kind::Group => {
                        let stored = next(4).and_then(Tok::word).is_some_and(|w| {
                            matches!(w.as_str(), "VIRTUAL" | "STORED" | "PERSISTENT")
                        });
                        Some(if stored { 4 } else { 3 })
                    }
                    // System versioning (`GENERATED ALWAYS AS ROW START`):
                    // never NULL, as the source reports.
                    Some(t) if t.word().as_deref() == Some("ROW") && next(4).is_some() => {
                        edits.push((toks[i - 1].end, toks[i + 4].end, " NOT NULL".into()));
                        i += 5;
                        continue;
                    }
                    _ => None,
                }
            }
            Some("CHECK") if next(1).is_some_and(|t| t.kind == Kind::Group) => {
                let marks_json = next(1).is_some_and(|t| {
                    t.text
                        .eq_ignore_ascii_case(&format!("(json_valid({name}))"))
                });
                (!marks_json).then_some(1)
            }
            Some("DEFAULT") if next(1).is_some_and(|t| t.kind == Kind::Group) => Some(1),
            Some("INVISIBLE") => Some(0),
            Some("COLLATE") => {
                if let Some(t) = next(1) {
                    let mapped = collations.map(t.text);
                    match mapped {
                        Some(m) if m != t.text => edits.push((t.start, t.end, m)),
                        Some(_) => {}
                        None => edits.push((toks[i - 1].end, t.end, String::new())),
                    }
                }
                i += 2;
                continue;
            }
            _ if toks[i].kind == Kind::Comment => Some(0),
            _ => None,
        };
        match cut {
            Some(n) => {
                edits.push((toks[i - 1].end, toks[i + n].end, String::new()));
                i += n + 1;
            }
            None => i += 1,
        }
    }
    apply(item, edits)
}

/// The statements that add `keys` (from [`ReplicaDdl::deferred_keys`]) to
/// replica table `table`: the plain ones in one `ALTER TABLE`, each
/// `FULLTEXT` one alone (InnoDB builds one per statement).
pub fn add_keys(table: &str, keys: &[String]) -> Vec<String> {
    let (fulltext, plain): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| k.starts_with("FULLTEXT "));
    std::iter::once(plain)
        .filter(|keys| !keys.is_empty())
        .chain(fulltext.into_iter().map(|k| vec![k]))
        .map(|keys| {
            let adds: Vec<String> = keys.iter().map(|k| format!("ADD {k}")).collect();
            format!("ALTER TABLE {} {}", ident::mysql(table), adds.join(", "))
        })
        .collect()
}

/// The `UNIQUE` secondary keys of a `SHOW CREATE TABLE` text, each by name
/// with the plain key the replica keeps instead (see [`secondary_key`]).
pub fn unique_keys(show_create: &str) -> Vec<(String, String)> {
    let Some(open) = show_create.find('(') else {
        return Vec::new();
    };
    let close = closing(show_create, open).unwrap_or(show_create.len());
    split_top(&show_create[open + 1..close])
        .into_iter()
        .map(str::trim)
        .filter(|item| tokens(item).first().and_then(Tok::word).as_deref() == Some("UNIQUE"))
        .filter_map(|item| Some((first_identifier(item)?, secondary_key(item)?)))
        .collect()
}

/// A column definition's type as `COLUMN_TYPE` writes it (`varchar(100)`).
fn column_type(item: &str) -> String {
    let toks = tokens(item);
    match (toks.get(1), toks.get(2)) {
        (Some(word), Some(group)) if group.kind == Kind::Group => {
            format!("{}{}", word.text, group.text)
        }
        (Some(word), _) => word.text.to_string(),
        _ => String::new(),
    }
}

/// A column definition that takes NULL and defaults to it: its
/// nullability, default, `ON UPDATE` and `AUTO_INCREMENT` left out.
fn nullable(definition: &str) -> String {
    let toks = tokens(definition);
    let mut edits = Vec::new();
    let mut i = 1;
    while i < toks.len() {
        let word_at = |n: usize| toks.get(n).and_then(Tok::word);
        // The clause's value: a literal, a negative number, or a function
        // call (`current_timestamp()`).
        let value_end = |n: usize| {
            let n = if toks.get(n).is_some_and(|t| t.text == "-") {
                n + 1
            } else {
                n
            };
            match toks.get(n + 1) {
                Some(t) if t.kind == Kind::Group && toks[n].kind == Kind::Word => n + 1,
                _ => n,
            }
        };
        let last = match (word_at(i).as_deref(), word_at(i + 1).as_deref()) {
            (Some("NOT"), Some("NULL")) => i + 1,
            (Some("NULL" | "AUTO_INCREMENT"), _) => i,
            (Some("DEFAULT"), _) => value_end(i + 1),
            (Some("ON"), Some("UPDATE")) => value_end(i + 2),
            _ => {
                i += 1;
                continue;
            }
        };
        let last = last.min(toks.len() - 1);
        edits.push((toks[i - 1].end, toks[last].end, String::new()));
        i = last + 1;
    }
    format!("{} NULL DEFAULT NULL", apply(definition, edits))
}

/// A secondary key as the replica builds it: plain, without version
/// comments; `None` for a key on an expression (MySQL 8's functional
/// indexes), which only serves queries the replica does not get.
fn secondary_key(item: &str) -> Option<String> {
    if parts(item).iter().any(|p| p.starts_with('(')) {
        return None;
    }
    let plain = without_comments(item);
    let toks = tokens(&plain);
    match toks.first().and_then(Tok::word).as_deref() {
        Some("UNIQUE") => {
            let rest = &plain[toks.get(1).map_or(plain.len(), |t| t.start)..];
            Some(if rest.to_ascii_uppercase().starts_with("INDEX") {
                format!("KEY{}", &rest["INDEX".len()..])
            } else {
                rest.to_string()
            })
        }
        _ => Some(plain),
    }
}

/// The table options the replica keeps: engine, character set, collation.
fn table_options(tail: &str, collations: &mut Collations<'_>) -> String {
    let toks = tokens(tail);
    let value = |name: &str| {
        toks.windows(3)
            .find(|w| {
                w[0].word().as_deref() == Some(name) && w[1].text == "=" && w[2].kind == Kind::Word
            })
            .map(|w| w[2].text)
    };
    let engine = value("ENGINE")
        .filter(|e| ["innodb", "myisam", "aria"].contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or("InnoDB");
    let mut out = format!(" ENGINE={engine}");
    if let Some(charset) = value("CHARSET") {
        out.push_str(&format!(" DEFAULT CHARSET={charset}"));
    }
    if let Some(collation) = value("COLLATE").and_then(|c| collations.map(c)) {
        out.push_str(&format!(" COLLATE={collation}"));
    }
    out
}

fn apply(text: &str, mut edits: Vec<(usize, usize, String)>) -> String {
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, with) in edits {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&with);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

fn without_comments(item: &str) -> String {
    let toks = tokens(item);
    let edits = toks
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind == Kind::Comment)
        .map(|(i, t)| {
            (
                if i > 0 { toks[i - 1].end } else { t.start },
                t.end,
                String::new(),
            )
        })
        .collect();
    apply(item, edits)
}

fn has_word(item: &str, word: &str) -> bool {
    tokens(item)
        .iter()
        .any(|t| t.word().as_deref() == Some(word))
}

/// The first backquoted identifier of `text`, unquoted.
fn first_identifier(text: &str) -> Option<String> {
    tokens(text)
        .into_iter()
        .find(|t| t.kind == Kind::Quoted && t.text.starts_with('`'))
        .map(|t| t.text[1..t.text.len() - 1].replace("``", "`"))
}

/// The parts of the first parenthesised list of a key definition.
fn parts(item: &str) -> Vec<String> {
    tokens(item)
        .into_iter()
        .find(|t| t.kind == Kind::Group)
        .map(|g| {
            split_top(&g.text[1..g.text.len() - 1])
                .into_iter()
                .map(|p| p.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A run of letters, digits, `_` and `$`.
    Word,
    /// A quoted string or a backquoted identifier.
    Quoted,
    /// A parenthesised group, with everything inside it.
    Group,
    /// `/* … */`, including MySQL's versioned `/*!80023 … */`.
    Comment,
    /// Any other single character.
    Other,
}

#[derive(Debug)]
struct Tok<'a> {
    kind: Kind,
    text: &'a str,
    start: usize,
    end: usize,
}

impl Tok<'_> {
    fn word(&self) -> Option<String> {
        (self.kind == Kind::Word).then(|| self.text.to_ascii_uppercase())
    }
}

/// Where the token starting at byte `i` ends: a quoted string or
/// identifier (doubled or backslash-escaped quotes inside), a comment, or
/// one byte. Multi-byte characters never hold these ASCII bytes.
fn token_end(s: &[u8], i: usize) -> usize {
    match s[i] {
        q @ (b'`' | b'\'' | b'"') => {
            let mut j = i + 1;
            while j < s.len() {
                if s[j] == b'\\' && q != b'`' {
                    j += 2;
                } else if s[j] == q {
                    if s.get(j + 1) == Some(&q) {
                        j += 2;
                    } else {
                        return j + 1;
                    }
                } else {
                    j += 1;
                }
            }
            s.len()
        }
        b'/' if s.get(i + 1) == Some(&b'*') => s[i + 2..]
            .windows(2)
            .position(|w| w == b"*/")
            .map_or(s.len(), |p| i + 2 + p + 2),
        _ => i + 1,
    }
}

/// The index of the `)` closing the `(` at `open`.
fn closing(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i = token_end(b, i);
    }
    None
}

/// Splits `s` at the commas outside parentheses, quotes and comments.
fn split_top(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let (mut out, mut depth, mut from, mut i) = (Vec::new(), 0usize, 0, 0);
    while i < b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        i = token_end(b, i);
    }
    if !s[from..].trim().is_empty() {
        out.push(&s[from..]);
    }
    out
}

fn tokens(s: &str) -> Vec<Tok<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (kind, end) = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 {
            let mut j = i;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'$' || b[j] >= 0x80)
            {
                j += 1;
            }
            (Kind::Word, j)
        } else if c == b'(' {
            (Kind::Group, closing(s, i).map_or(b.len(), |j| j + 1))
        } else if matches!(c, b'`' | b'\'' | b'"') {
            (Kind::Quoted, token_end(b, i))
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            (Kind::Comment, token_end(b, i))
        } else {
            (Kind::Other, i + 1)
        };
        out.push(Tok {
            kind,
            text: &s[i..end],
            start: i,
            end,
        });
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mariadb_has(name: &str) -> bool {
        !name.contains("0900")
    }

    fn ddl(text: &str) -> ReplicaDdl {
        replica_ddl(
            text,
            "t",
            "t__etl_shadow",
            &mariadb_has,
            &Applied::default(),
        )
        .unwrap()
    }

    #[test]
    fn generated_invisible_and_checked_columns_become_plain() {
        // MySQL 8's own text (a generated invisible primary key and a
        // generated spatial column).
        let d = ddl("CREATE TABLE `t` (\n  \
             `my_row_id` bigint unsigned NOT NULL AUTO_INCREMENT /*!80023 INVISIBLE */,\n  \
             `lat` double NOT NULL,\n  `lng` double NOT NULL,\n  \
             `loc` point GENERATED ALWAYS AS (st_srid(point(`lng`,`lat`),4326)) STORED NOT NULL /*!80003 SRID 4326 */ /*!80023 INVISIBLE */ COMMENT 'geo',\n  \
             `doc` json DEFAULT (concat(_utf8mb4'{\"id\":',`lat`,_utf8mb4'}')),\n  \
             `n` int DEFAULT '0',\n  \
             PRIMARY KEY (`my_row_id`),\n  \
             SPATIAL KEY `loc` (`loc`),\n  \
             CONSTRAINT `t_chk_1` CHECK ((`lat` > -(90))) /*!80016 NOT ENFORCED */\n\
             ) ENGINE=InnoDB AUTO_INCREMENT=2 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci");
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  \
             `my_row_id` bigint unsigned NOT NULL AUTO_INCREMENT,\n  \
             `lat` double NOT NULL,\n  `lng` double NOT NULL,\n  \
             `loc` point NOT NULL COMMENT 'geo',\n  \
             `doc` json,\n  \
             `n` int DEFAULT '0',\n  \
             PRIMARY KEY (`my_row_id`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin"
        );
        assert_eq!(d.deferred_keys, ["SPATIAL KEY `loc` (`loc`)"]);
        assert_eq!(
            d.notes,
            [
                "the replica lacks collation utf8mb4_0900_ai_ci: its columns compare as utf8mb4_nopad_bin there"
            ]
        );
    }

    #[test]
    fn mariadb_generated_columns_checks_and_partitions() {
        let d = ddl(
            "CREATE TABLE `t` (\n  `id` int(11) NOT NULL,\n  `a` int(11) DEFAULT NULL,\n  \
             `b` int(11) GENERATED ALWAYS AS (`a` * 2) VIRTUAL,\n  \
             `c` varchar(20) GENERATED ALWAYS AS (concat('x, (',`a`,')')) STORED,\n  \
             `h` int(11) INVISIBLE DEFAULT 7,\n  \
             `j` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`j`)),\n  \
             `f` decimal(10,2) NOT NULL CHECK (`f` >= 0),\n  \
             PRIMARY KEY (`id`),\n  UNIQUE KEY `a` (`a`),\n  FULLTEXT KEY `c` (`c`),\n  \
             CONSTRAINT `chk` CHECK (`a` >= 0)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci\n PARTITION BY HASH (`id`)\nPARTITIONS 2",
        );
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  `id` int(11) NOT NULL,\n  `a` int(11) DEFAULT NULL,\n  \
             `b` int(11),\n  `c` varchar(20),\n  `h` int(11) DEFAULT 7,\n  \
             `j` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`j`)),\n  \
             `f` decimal(10,2) NOT NULL,\n  PRIMARY KEY (`id`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
        );
        assert_eq!(d.deferred_keys, ["KEY `a` (`a`)", "FULLTEXT KEY `c` (`c`)"]);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn mysql8_partitions_functional_keys_and_parsers_are_left_out() {
        let d = ddl("CREATE TABLE `t` (\n  `id` int NOT NULL,\n  \
             `name` varchar(31) CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_as_cs NOT NULL,\n  \
             `title` text COLLATE utf8mb4_unicode_ci,\n  \
             `d` date NOT NULL,\n  PRIMARY KEY (`id`,`d`),\n  KEY `lower_name` ((lower(`name`))),\n  \
             KEY `prefix` (`name`(10) DESC) /*!80000 INVISIBLE */,\n  \
             FULLTEXT KEY `ft` (`title`) /*!50100 WITH PARSER `ngram` */ \n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_0900_ai_ci ROW_FORMAT=COMPRESSED /*!80016 ENCRYPTION='Y' */\n\
             /*!50100 PARTITION BY RANGE (year(`d`))\n\
             (PARTITION p0 VALUES LESS THAN (2000) ENGINE = InnoDB,\n PARTITION p1 VALUES LESS THAN MAXVALUE ENGINE = InnoDB) */");
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  `id` int NOT NULL,\n  \
             `name` varchar(31) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,\n  \
             `title` text COLLATE utf8mb4_unicode_ci,\n  `d` date NOT NULL,\n  PRIMARY KEY (`id`,`d`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin"
        );
        assert_eq!(
            d.deferred_keys,
            [
                "KEY `prefix` (`name`(10) DESC)",
                "FULLTEXT KEY `ft` (`title`)"
            ]
        );
        assert_eq!(d.notes.len(), 2, "{:?}", d.notes);
    }

    #[test]
    fn foreign_keys_go_and_an_auto_increment_key_stays() {
        let d = ddl("CREATE TABLE `t` (\n  `a` bigint(20) NOT NULL,\n  \
             `n` bigint(20) NOT NULL AUTO_INCREMENT,\n  `p` bigint(20) NOT NULL,\n  \
             PRIMARY KEY (`a`),\n  KEY `p` (`p`),\n  KEY `n` (`n`),\n  \
             CONSTRAINT `fk` FOREIGN KEY (`p`) REFERENCES `parent` (`id`) ON DELETE CASCADE\n\
             ) ENGINE=MyISAM DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci");
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  `a` bigint(20) NOT NULL,\n  \
             `n` bigint(20) NOT NULL AUTO_INCREMENT,\n  `p` bigint(20) NOT NULL,\n  \
             PRIMARY KEY (`a`),\n  KEY `n` (`n`)\n\
             ) ENGINE=MyISAM DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci"
        );
        assert_eq!(d.deferred_keys, ["KEY `p` (`p`)"]);
    }

    #[test]
    fn system_versioning_leaves_plain_columns() {
        let d = ddl("CREATE TABLE `t` (\n  `FeeNum` bigint(20) NOT NULL,\n  \
             `s` timestamp(6) GENERATED ALWAYS AS ROW START INVISIBLE,\n  \
             `e` timestamp(6) GENERATED ALWAYS AS ROW END INVISIBLE,\n  \
             PRIMARY KEY (`FeeNum`,`e`),\n  PERIOD FOR SYSTEM_TIME (`s`, `e`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci WITH SYSTEM VERSIONING");
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  `FeeNum` bigint(20) NOT NULL,\n  \
             `s` timestamp(6) NOT NULL,\n  `e` timestamp(6) NOT NULL,\n  PRIMARY KEY (`FeeNum`,`e`)\n\
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"
        );
    }

    #[test]
    fn odd_names_and_strings_do_not_confuse_the_split() {
        let d = ddl("CREATE TABLE `t` (\n  `a,b` int(11) NOT NULL,\n  \
             `c``d` varchar(9) DEFAULT 'it''s, (x' COMMENT 'GENERATED ALWAYS AS (1) VIRTUAL',\n  \
             `e` varchar(9) DEFAULT 'a\\'b)',\n  PRIMARY KEY (`a,b`)\n) ENGINE=ARCHIVE");
        assert_eq!(
            d.create,
            "CREATE TABLE `t__etl_shadow` (\n  `a,b` int(11) NOT NULL,\n  \
             `c``d` varchar(9) DEFAULT 'it''s, (x' COMMENT 'GENERATED ALWAYS AS (1) VIRTUAL',\n  \
             `e` varchar(9) DEFAULT 'a\\'b)',\n  PRIMARY KEY (`a,b`)\n) ENGINE=InnoDB"
        );
    }

    #[test]
    fn a_view_or_another_name_is_refused() {
        let view = "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`%` SQL SECURITY DEFINER VIEW `t` AS select 1 AS `1`";
        let e = replica_ddl(view, "t", "s", &mariadb_has, &Applied::default()).unwrap_err();
        assert!(e.to_string().contains("not a plain table"), "{e}");
        assert!(
            replica_ddl(
                "CREATE TABLE `u` (\n  `a` int\n)",
                "t",
                "s",
                &mariadb_has,
                &Applied::default()
            )
            .is_err()
        );
    }

    #[test]
    fn a_column_policy_drops_hashes_and_nulls_columns_and_their_keys() {
        let text = "CREATE TABLE `t` (\n  `PatNum` bigint(20) NOT NULL AUTO_INCREMENT,\n  \
                    `LName` varchar(100) CHARACTER SET utf8mb3 COLLATE utf8mb3_general_ci NOT NULL DEFAULT '',\n  \
                    `SSN` varchar(100) NOT NULL DEFAULT '',\n  \
                    `Balance` int(11) NOT NULL DEFAULT -1,\n  \
                    `Stamp` timestamp NOT NULL DEFAULT current_timestamp() ON UPDATE current_timestamp(),\n  \
                    PRIMARY KEY (`PatNum`),\n  KEY `ssn` (`SSN`),\n  KEY `name` (`LName`(10),`PatNum`)\n\
                    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3";
        let policy = Applied {
            exclude: vec!["SSN".into()],
            mask: vec![
                ("Balance".into(), Mask::Null),
                ("LName".into(), Mask::Hash),
                ("Stamp".into(), Mask::Null),
            ],
        };
        let made = replica_ddl(text, "t", "t", &mariadb_has, &policy).unwrap();
        assert!(!made.create.contains("SSN"), "{}", made.create);
        assert!(
            made.create.contains(
                "`LName` varchar(100) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL"
            ),
            "{}",
            made.create
        );
        assert!(
            made.create.contains("`Balance` int(11) NULL DEFAULT NULL,"),
            "{}",
            made.create
        );
        assert!(
            made.create.contains("`Stamp` timestamp NULL DEFAULT NULL,"),
            "{}",
            made.create
        );
        assert_eq!(
            made.deferred_keys,
            vec!["KEY `name` (`LName`(10),`PatNum`)".to_string()]
        );
    }

    #[test]
    fn unique_keys_become_plain_and_fulltext_keys_are_added_one_by_one() {
        let text = "CREATE TABLE `t` (\n  `a` int(11) NOT NULL,\n  `b` varchar(10) DEFAULT 'UNIQUE KEY',\n  \
                    PRIMARY KEY (`a`),\n  UNIQUE KEY `odd``name` (`b`),\n  UNIQUE INDEX `u2` (`a`,`b`),\n  \
                    KEY `k` (`b`)\n) ENGINE=InnoDB";
        assert_eq!(
            unique_keys(text),
            vec![
                ("odd`name".to_string(), "KEY `odd``name` (`b`)".to_string()),
                ("u2".to_string(), "KEY `u2` (`a`,`b`)".to_string()),
            ]
        );
        let keys = vec![
            "KEY `k` (`b`)".to_string(),
            "FULLTEXT KEY `f1` (`b`)".to_string(),
            "KEY `k2` (`a`)".to_string(),
            "FULLTEXT KEY `f2` (`b`)".to_string(),
        ];
        assert_eq!(
            add_keys("s", &keys),
            vec![
                "ALTER TABLE `s` ADD KEY `k` (`b`), ADD KEY `k2` (`a`)".to_string(),
                "ALTER TABLE `s` ADD FULLTEXT KEY `f1` (`b`)".to_string(),
                "ALTER TABLE `s` ADD FULLTEXT KEY `f2` (`b`)".to_string(),
            ]
        );
        assert!(add_keys("s", &[]).is_empty());
    }
}
