//! The interactive `cella top`: a full-screen table redrawn at every refresh and
//! key press, with keys to sort and filter. It draws with ratatui on crossterm, which
//! writes plain ANSI sequences to the terminal, so it works over ssh.

use std::io::Stdout;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};

use super::rows::{HEADER, Row, SortBy, matches, sort};

/// What the view shows besides the rows.
#[derive(Debug, Clone)]
pub struct View {
    pub sort: SortBy,
    pub filter: String,
    /// The filter is being typed.
    pub editing: bool,
    /// Why the last refresh failed, if it did.
    pub error: Option<String>,
    pub master: String,
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

/// Applies a key to the view.
pub fn key(view: &mut View, k: KeyEvent) -> Action {
    if k.kind != KeyEventKind::Press {
        return Action::None;
    }
    if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
        return Action::Quit;
    }
    if view.editing {
        match k.code {
            KeyCode::Enter => view.editing = false,
            KeyCode::Esc => {
                view.editing = false;
                view.filter.clear();
            }
            KeyCode::Backspace => {
                view.filter.pop();
            }
            KeyCode::Char(c) => view.filter.push(c),
            _ => return Action::None,
        }
        return Action::Redraw;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('/') => {
            view.editing = true;
            Action::Redraw
        }
        KeyCode::Char(c) => match SortBy::from_key(c) {
            Some(s) => {
                view.sort = s;
                Action::Redraw
            }
            None => Action::None,
        },
        _ => Action::None,
    }
}

/// Draws one frame of `rows` (sorted and filtered here).
pub fn draw<B: Backend>(
    terminal: &mut Terminal<B>,
    view: &View,
    rows: &[Row],
) -> std::io::Result<()> {
    let mut shown: Vec<Row> = rows
        .iter()
        .filter(|r| matches(r, &view.filter))
        .cloned()
        .collect();
    sort(&mut shown, view.sort);
    terminal.draw(|frame| {
        let [top, table, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let status = format!(
            "cella top  {}  {} running, {} shown  sorted by {}{}",
            view.master,
            rows.len(),
            shown.len(),
            view.sort.name(),
            view.error
                .as_ref()
                .map(|e| format!("  refresh failed: {e}"))
                .unwrap_or_default()
        );
        frame.render_widget(Paragraph::new(status), top);
        // Only the rows that fit are laid out.
        let visible = usize::from(table.height.saturating_sub(1));
        let body = shown
            .iter()
            .take(visible)
            .map(|r| TableRow::new(r.cells().into_iter().map(Cell::from)));
        let widths = [
            Constraint::Min(16),
            Constraint::Min(10),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(16),
        ];
        let header = TableRow::new(HEADER.iter().map(|h| Cell::from(*h)))
            .style(Style::default().add_modifier(Modifier::REVERSED));
        frame.render_widget(Table::new(body, widths).header(header), table);
        let help = if view.editing {
            format!("filter: {}_   (Enter keeps it, Esc clears it)", view.filter)
        } else {
            let filter = if view.filter.is_empty() {
                String::new()
            } else {
                format!("filter {:?}  ", view.filter)
            };
            format!(
                "{filter}sort: c cpu  m memory  i io  t throttled  p pressure  n name  a agent   / filter   q quit"
            )
        };
        frame.render_widget(Paragraph::new(Line::from(help)), bottom);
    })?;
    Ok(())
}

/// Runs the interactive view until `q`: `refresh` gives the rows (or why not) every
/// `interval`.
pub fn run(
    mut view: View,
    interval: Duration,
    mut refresh: impl FnMut() -> Result<Vec<Row>, String>,
) -> anyhow::Result<()> {
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut view, interval, &mut refresh);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    view: &mut View,
    interval: Duration,
    refresh: &mut impl FnMut() -> Result<Vec<Row>, String>,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            match refresh() {
                Ok(r) => {
                    rows = r;
                    view.error = None;
                }
                Err(e) => view.error = Some(e),
            }
            next = Instant::now() + interval;
            draw(terminal, view, &rows)?;
        }
        if event::poll(next.saturating_duration_since(Instant::now()))? {
            match event::read()? {
                Event::Key(k) => match key(view, k) {
                    Action::Quit => return Ok(()),
                    Action::Redraw => draw(terminal, view, &rows)?,
                    Action::None => {}
                },
                Event::Resize(..) => draw(terminal, view, &rows)?,
                _ => {}
            }
        }
    }
}
