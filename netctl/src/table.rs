//! Aligned text columns, as Docker prints its lists.

/// The longest cell printed.
const MAX_CELL_CHARS: usize = 256;

/// Text reported by a node, made safe for a terminal (no control
/// characters, bounded length).
pub fn printable(text: &str) -> String {
    netctl_proto::printable(text, MAX_CELL_CHARS)
}

/// Renders `rows` under `headers`, each column as wide as its widest cell,
/// separated by three spaces; every cell made [`printable`].
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|c| printable(c)).collect()).collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}   "));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_carry_terminal_escapes() {
        let rows = vec![vec!["\u{1b}]0;owned\u{7}x\nline".to_string()]];
        let out = render(&["ERROR"], &rows);
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert_eq!(out.lines().count(), 2);
        let long = render(&["E"], &[vec!["y".repeat(10_000)]]);
        assert!(long.len() < 300);
    }

    #[test]
    fn columns_align_on_the_widest_cell() {
        let rows = vec![vec!["abc".to_string(), "x".to_string()], vec!["a".to_string(), "yy".to_string()]];
        assert_eq!(render(&["ID", "NAME"], &rows), "ID    NAME\nabc   x\na     yy\n");
    }
}
