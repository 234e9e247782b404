//! Which layers of a chain a copy must send: from the backup down, every layer the destination
//! lacks, until one it holds completed. Pure, so the cases are tested as a table.

use crate::catalog::CopyStatus;

/// A layer of the chain, top first, with its copy's state at the destination (if any).
#[derive(Debug, Clone)]
pub struct Layer<'a> {
    pub backup_id: &'a str,
    pub copy: Option<CopyStatus>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Bottom first: what to send. The first is a full or sits on a completed copy.
    Send(Vec<&'a str>),
    /// The backup itself is copied already.
    Done,
    /// A layer's copy is under way (another job's).
    Busy(&'a str),
}

/// `chain` is top first (the backup to copy, then its parent, ...).
pub fn plan<'a>(chain: &[Layer<'a>]) -> Plan<'a> {
    let mut send = Vec::new();
    for layer in chain {
        match layer.copy {
            Some(CopyStatus::Completed) if send.is_empty() => return Plan::Done,
            Some(CopyStatus::Completed) => break,
            Some(s) if s.is_live() => return Plan::Busy(layer.backup_id),
            _ => send.push(layer.backup_id),
        }
    }
    send.reverse();
    Plan::Send(send)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CopyStatus::*;

    fn chain(states: &[Option<CopyStatus>]) -> Vec<Layer<'static>> {
        const IDS: [&str; 5] = ["top", "mid2", "mid1", "base", "full"];
        states
            .iter()
            .enumerate()
            .map(|(i, s)| Layer {
                backup_id: IDS[i],
                copy: *s,
            })
            .collect()
    }

    #[test]
    fn cases() {
        let table: &[(&[Option<CopyStatus>], Plan)] = &[
            (&[None], Plan::Send(vec!["top"])),
            (&[None, None, None], Plan::Send(vec!["mid1", "mid2", "top"])),
            (&[None, Some(Completed), None], Plan::Send(vec!["top"])),
            (
                &[None, Some(Failed), Some(Completed)],
                Plan::Send(vec!["mid2", "top"]),
            ),
            (&[Some(Completed), None], Plan::Done),
            (&[Some(Failed)], Plan::Send(vec!["top"])),
            (&[None, Some(Copying)], Plan::Busy("mid2")),
            (&[Some(Pending)], Plan::Busy("top")),
            (
                &[None, Some(Completed), Some(Copying)],
                Plan::Send(vec!["top"]),
            ),
        ];
        for (states, want) in table {
            assert_eq!(&plan(&chain(states)), want, "{states:?}");
        }
    }
}
