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

#[cfg(test)]
mod bench {
    //! `cella top`'s frame time for 1,000 running tasks: from the master's JSON
    //! (`GET /api/v1/tasks?state=RUNNING`, as received) to a drawn frame: decoding,
    //! rates, sorting, filtering and ratatui's drawing into an in-memory 200×60
    //! terminal (the terminal's own output is left out). A benchmark, not a test:
    //! `cargo test -p cella-cli --bin cella top_frame -- --ignored --nocapture`.

    use std::time::{Duration, Instant};

    use cella_proto::{api, v1};
    use ratatui::backend::TestBackend;

    use super::super::rows::Samples;
    use super::*;

    fn snapshot(tasks: usize, t: u64) -> String {
        let list: Vec<api::Task> = (0..tasks as u64)
            .map(|i| api::Task {
                id: format!("task-{i:05}-{:08x}", i * 2_654_435_761 % (1 << 32)),
                name: "bench".into(),
                framework_id: "fw".into(),
                agent_id: format!("agent-{:04}", i % 10),
                state: v1::TaskState::TaskRunning,
                reason: v1::Reason::Unspecified,
                message: String::new(),
                exit_code: None,
                signal: None,
                command: vec!["sleep".into(), "1000".into()],
                secrets: Vec::new(),
                resources: v1::Resources {
                    cpus: 0.5,
                    mem_bytes: 256 << 20,
                    disk_bytes: 0,
                },
                agent_endpoint: "https://10.0.0.1:5051".into(),
                image_digest: String::new(),
                usage: Some(api::Usage {
                    timestamp_ns: t * 1_000_000_000,
                    figures: cella_proto::usage::Usage {
                        cpu_user_ns: Some(t * i * 1_000_000),
                        cpu_system_ns: Some(t * 1_000_000),
                        cpu_throttled_ns: Some(0),
                        mem_current_bytes: Some(i << 16),
                        io_read_bytes: Some(t * i),
                        io_write_bytes: Some(t),
                        pids_current: Some(3),
                        cpu_pressure: Some(api::Pressure::default()),
                        ..Default::default()
                    },
                }),
                updated_ns: 1,
            })
            .collect();
        serde_json::to_string(&list).unwrap()
    }

    #[test]
    #[ignore = "a benchmark: run it with --ignored --nocapture"]
    fn top_frame_of_1000_tasks() {
        let before = snapshot(1000, 1);
        let after = snapshot(1000, 2);
        let mut terminal = Terminal::new(TestBackend::new(200, 60)).unwrap();
        let view = View {
            sort: SortBy::Cpu,
            filter: String::new(),
            editing: false,
            error: None,
            master: "https://master:5050".into(),
        };
        // The thread's CPU time: on a busy machine a frame's wall time is mostly
        // what other work took from it.
        let cpu = || {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                .map_or(Duration::ZERO, Duration::from)
        };
        // Per frame: the whole, then its parts (decode, rates, sort and draw).
        let mut times: Vec<[Duration; 4]> = Vec::new();
        let mut cpu_times: Vec<Duration> = Vec::new();
        for _ in 0..30 {
            let mut samples = Samples::default();
            let first: Vec<api::Task> = serde_json::from_str(&before).unwrap();
            samples.update(&first);
            let started = Instant::now();
            let cpu_started = cpu();
            let tasks: Vec<api::Task> = serde_json::from_str(&after).unwrap();
            let decoded = started.elapsed();
            samples.update(&tasks);
            let rows = samples.rows(&tasks);
            let rated = started.elapsed();
            draw(&mut terminal, &view, &rows).unwrap();
            let total = started.elapsed();
            cpu_times.push(cpu().saturating_sub(cpu_started));
            times.push([total, decoded, rated - decoded, total - rated]);
        }
        times.sort();
        cpu_times.sort();
        let [total, decode, rates, draw] = times[times.len() / 2];
        println!(
            "cella top, 1,000 running tasks ({} KiB of JSON), JSON to drawn frame: median {total:?} \
             (decode {decode:?}, rates {rates:?}, sort and draw {draw:?}), max {:?}; CPU time \
             median {:?}, max {:?} (30 frames)",
            after.len() / 1024,
            times[times.len() - 1][0],
            cpu_times[cpu_times.len() / 2],
            cpu_times[cpu_times.len() - 1]
        );
    }
}
