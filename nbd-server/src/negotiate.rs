//! The handshake phase on a socket: greeting, option haggling, and the export the client picks.
//! Message formats live in `proto::handshake`; this module only decides and does the I/O.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::command::MetaContext;
use crate::proto::handshake::{
    ClientOption, ExportNameReply, Greeting, Info, InfoRequest, MetaContextRequest, OptionHeader,
    OptionReply, OptionReplyBody, TlsGate, TlsState, decode_client_flags, tls_gate,
};
use crate::proto::request::HeaderStyle;
use crate::proto::*;
use crate::registry::{AttachError, Attachment, ExportEntry};
use crate::server::Shared;
use crate::tls::MaybeTls;

/// What the client negotiated, ready for transmission.
pub(crate) struct Session {
    pub attachment: Attachment,
    pub style: HeaderStyle,
    pub contexts: Vec<MetaContext>,
}

fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Transmission flags for `export` on a connection of `style`.
pub(crate) fn transmission_flags(entry: &ExportEntry, style: HeaderStyle) -> u16 {
    let mut f = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_CAN_MULTI_CONN
        | TFLAG_SEND_CACHE;
    if entry.export.read_only() {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
    }
    if style.structured() {
        f |= TFLAG_SEND_DF;
    }
    f
}

/// NBD_INFO_BLOCK_SIZE: minimum 1, the export's preferred size (a power of two, at least 512),
/// and the payload limit as maximum.
pub(crate) fn block_size(entry: &ExportEntry, max_payload: u32) -> Info {
    let mut preferred = entry.export.preferred_block_size().max(512);
    if !preferred.is_power_of_two() {
        preferred = preferred.checked_next_power_of_two().unwrap_or(1 << 31);
    }
    Info::BlockSize {
        min: 1,
        preferred,
        max: max_payload.max(preferred),
    }
}

struct State {
    style: HeaderStyle,
    no_zeroes: bool,
    /// Export named in the last SET_META_CONTEXT and the contexts it selected.
    meta: Option<(String, Vec<MetaContext>)>,
}

impl State {
    /// The session on `name`, with the contexts SET_META_CONTEXT selected if it named that export.
    fn session(&self, attachment: Attachment, name: &str) -> Session {
        let contexts = match &self.meta {
            Some((export, ctxs)) if export == name && self.style.structured() => ctxs.clone(),
            _ => Vec::new(),
        };
        Session {
            attachment,
            style: self.style,
            contexts,
        }
    }
}

/// What answering one option leads to.
enum Next {
    /// These replies, then the next option.
    Reply(Vec<OptionReply>),
    /// The option answered itself (STARTTLS acks before the TLS handshake); the next option.
    Answered,
    /// The handshake is over: transmission with this session, or `None` if the client ended it.
    End(Option<Session>),
}

/// Runs the handshake. `Ok(None)`: the client ended it (ABORT, or EOF between options).
pub(crate) async fn negotiate<S>(
    stream: &mut MaybeTls<S>,
    shared: &Shared,
) -> io::Result<Option<Session>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut st = greet(stream).await?;
    loop {
        let Some((header, data)) = read_option(stream).await? else {
            return Ok(None);
        };
        let next = match admit(stream, shared, header, &data)? {
            Ok(option) => answer(stream, shared, &mut st, option).await?,
            Err(refusal) => Next::Reply(vec![refusal]),
        };
        match next {
            Next::Reply(replies) => send(stream, &replies).await?,
            Next::Answered => {}
            Next::End(session) => return Ok(session),
        }
    }
}

/// Sends the greeting and takes the client's flags.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> io::Result<State> {
    let offered = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
    let mut out = BytesMut::with_capacity(256);
    Greeting { flags: offered }.encode(&mut out);
    stream.write_all(&out).await?;
    let raw = stream.read_u32().await?;
    let client_flags = decode_client_flags(raw, offered).map_err(invalid)?;
    Ok(State {
        style: HeaderStyle::Simple,
        no_zeroes: client_flags & CLIENT_FLAG_NO_ZEROES != 0,
        meta: None,
    })
}

/// The next option's header and data; `None` at EOF between options.
async fn read_option<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Option<(OptionHeader, Vec<u8>)>> {
    let mut head = [0u8; OptionHeader::LEN];
    match stream.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (header, _) = OptionHeader::decode(&head)
        .map_err(invalid)?
        .ok_or_else(|| invalid("short option header"))?;
    // Refused before anything is sized by it.
    header.check_length().map_err(invalid)?;
    let mut data = vec![0u8; header.length as usize];
    stream.read_exact(&mut data).await?;
    Ok(Some((header, data)))
}

/// The option, if TLS policy lets it through and it decodes; otherwise the error reply to send
/// instead, or (for EXPORT_NAME, which has no error reply) the end of the connection.
fn admit<S>(
    stream: &MaybeTls<S>,
    shared: &Shared,
    header: OptionHeader,
    data: &[u8],
) -> io::Result<Result<ClientOption, OptionReply>> {
    match tls_gate(tls_state(shared, stream), header.option) {
        TlsGate::Pass => {}
        TlsGate::Close => {
            return Err(invalid("EXPORT_NAME in clear on a server requiring TLS"));
        }
        TlsGate::TlsRequired => {
            tracing::debug!(option = header.option, "refused in clear: TLS required");
            return Ok(Err(OptionReply::error(
                header.option,
                REP_ERR_TLS_REQD,
                "this server requires TLS: send NBD_OPT_STARTTLS first",
            )));
        }
    }
    match ClientOption::decode(header.option, data) {
        Ok(o) => Ok(Ok(o)),
        Err(e) if header.option == OPT_EXPORT_NAME => Err(invalid(e)),
        Err(e) => {
            tracing::debug!(option = header.option, error = %e, "malformed option");
            Ok(Err(OptionReply::error(
                header.option,
                REP_ERR_INVALID,
                e.to_string(),
            )))
        }
    }
}

/// Answers one option. EXPORT_NAME, GO and ABORT end the handshake; STARTTLS sends its own ACK,
/// because the TLS handshake must follow it at once.
async fn answer<S>(
    stream: &mut MaybeTls<S>,
    shared: &Shared,
    st: &mut State,
    option: ClientOption,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::trace!(?option, "option");
    let code = option.code();
    Ok(match option {
        ClientOption::ExportName(name) => {
            Next::End(Some(export_name(stream, shared, st, &name).await?))
        }
        ClientOption::Abort => {
            // The client may already be gone; the ACK is a courtesy.
            let _ = send(stream, &[OptionReply::new(code, OptionReplyBody::Ack)]).await;
            Next::End(None)
        }
        ClientOption::List => Next::Reply(list(shared, code)),
        ClientOption::StartTls => start_tls(stream, shared, st, code).await?,
        ClientOption::StructuredReply => Next::Reply(vec![structured_reply(st, code)]),
        ClientOption::ExtendedHeaders => Next::Reply(vec![extended_headers(st, code)]),
        ClientOption::ListMetaContext(req) => {
            Next::Reply(meta_context(shared, st, code, req, false))
        }
        ClientOption::SetMetaContext(req) => Next::Reply(meta_context(shared, st, code, req, true)),
        ClientOption::Info(req) => match info(shared, st, code, &req, false) {
            Ok((r, _)) => Next::Reply(r),
            Err(r) => Next::Reply(vec![r]),
        },
        ClientOption::Go(req) => match info(shared, st, code, &req, true) {
            Ok((r, Some(attachment))) => {
                send(stream, &r).await?;
                Next::End(Some(st.session(attachment, &req.name)))
            }
            Ok((r, None)) => Next::Reply(r),
            Err(r) => Next::Reply(vec![r]),
        },
        ClientOption::Unknown(_) => Next::Reply(vec![OptionReply::error(
            code,
            REP_ERR_UNSUP,
            "unknown option",
        )]),
    })
}

/// EXPORT_NAME: attaches and answers with the export's size and flags. It has no error reply, so
/// any refusal closes the connection.
async fn export_name<S>(
    stream: &mut MaybeTls<S>,
    shared: &Shared,
    st: &State,
    name: &str,
) -> io::Result<Session>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if st.style == HeaderStyle::Extended {
        return Err(invalid("EXPORT_NAME after extended headers"));
    }
    let attachment = lookup_and_attach(shared, name).map_err(|(_, m)| invalid(m))?;
    let entry = attachment.entry();
    let mut out = BytesMut::with_capacity(134);
    ExportNameReply {
        size: entry.export.size(),
        flags: transmission_flags(entry, st.style),
    }
    .encode(st.no_zeroes, &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(st.session(attachment, name))
}

fn list(shared: &Shared, code: u32) -> Vec<OptionReply> {
    if !shared.config.list_exports {
        return vec![OptionReply::error(
            code,
            REP_ERR_POLICY,
            "this server does not list its exports",
        )];
    }
    let mut replies: Vec<OptionReply> = shared
        .registry
        .names()
        .into_iter()
        .map(|name| {
            OptionReply::new(
                code,
                OptionReplyBody::Server {
                    name,
                    details: String::new(),
                },
            )
        })
        .collect();
    replies.push(OptionReply::new(code, OptionReplyBody::Ack));
    replies
}

/// STARTTLS: the ACK in clear, then the TLS handshake on the same socket.
async fn start_tls<S>(
    stream: &mut MaybeTls<S>,
    shared: &Shared,
    st: &mut State,
    code: u32,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = match &shared.config.tls {
        None => {
            return Ok(Next::Reply(vec![OptionReply::error(
                code,
                REP_ERR_POLICY,
                "TLS is not configured on this server",
            )]));
        }
        Some(_) if stream.is_tls() => {
            return Ok(Next::Reply(vec![OptionReply::error(
                code,
                REP_ERR_INVALID,
                "TLS is already in use",
            )]));
        }
        Some(tls) => tls,
    };
    send(stream, &[OptionReply::new(code, OptionReplyBody::Ack)]).await?;
    stream.start_tls(&tls.config).await?;
    tracing::debug!("TLS established");
    // STARTTLS resets everything negotiated before it (the client flags stay).
    st.style = HeaderStyle::Simple;
    st.meta = None;
    Ok(Next::Answered)
}

fn structured_reply(st: &mut State, code: u32) -> OptionReply {
    match st.style {
        HeaderStyle::Extended => OptionReply::error(
            code,
            REP_ERR_EXT_HEADER_REQD,
            "extended headers already negotiated",
        ),
        HeaderStyle::Structured => OptionReply::error(
            code,
            REP_ERR_INVALID,
            "structured replies already negotiated",
        ),
        HeaderStyle::Simple => {
            st.style = HeaderStyle::Structured;
            OptionReply::new(code, OptionReplyBody::Ack)
        }
    }
}

fn extended_headers(st: &mut State, code: u32) -> OptionReply {
    if st.style == HeaderStyle::Extended {
        OptionReply::error(code, REP_ERR_INVALID, "extended headers already negotiated")
    } else {
        st.style = HeaderStyle::Extended;
        OptionReply::new(code, OptionReplyBody::Ack)
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, replies: &[OptionReply]) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(256);
    for r in replies {
        r.encode(&mut out).map_err(invalid)?;
    }
    stream.write_all(&out).await?;
    // Inside TLS the records may wait in the session until flushed.
    stream.flush().await
}

fn tls_state<S>(shared: &Shared, stream: &MaybeTls<S>) -> TlsState {
    match (&shared.config.tls, stream) {
        (_, MaybeTls::Tls(_)) => TlsState::Active,
        (None, _) => TlsState::Unavailable,
        (Some(tls), _) if tls.require => TlsState::Required,
        (Some(_), _) => TlsState::Offered,
    }
}

fn lookup_and_attach(shared: &Shared, name: &str) -> Result<Attachment, (u32, String)> {
    if shared.stop_reading.is_cancelled() {
        return Err((REP_ERR_SHUTDOWN, "server is shutting down".into()));
    }
    let entry = shared
        .registry
        .get(name)
        .ok_or_else(|| (REP_ERR_UNKNOWN, format!("unknown export {name:?}")))?;
    entry
        .attach(shared.config.max_connections_per_export)
        .map_err(|e| match e {
            AttachError::Removed => (REP_ERR_UNKNOWN, format!("unknown export {name:?}")),
            AttachError::TooManyConnections => (
                REP_ERR_POLICY,
                format!("too many connections to export {name:?}"),
            ),
        })
}

type InfoResult = Result<(Vec<OptionReply>, Option<Attachment>), OptionReply>;

/// Replies to INFO or GO; GO also attaches the connection to the export.
fn info(shared: &Shared, st: &State, code: u32, req: &InfoRequest, go: bool) -> InfoResult {
    let (entry, attachment): (Arc<ExportEntry>, Option<Attachment>) = if go {
        let a = lookup_and_attach(shared, &req.name)
            .map_err(|(c, m)| OptionReply::error(code, c, m))?;
        (Arc::clone(a.entry()), Some(a))
    } else {
        if shared.stop_reading.is_cancelled() {
            return Err(OptionReply::error(
                code,
                REP_ERR_SHUTDOWN,
                "server is shutting down",
            ));
        }
        let e = shared.registry.get(&req.name).ok_or_else(|| {
            OptionReply::error(
                code,
                REP_ERR_UNKNOWN,
                format!("unknown export {:?}", req.name),
            )
        })?;
        (e, None)
    };
    let style = st.style;
    let mut replies = vec![OptionReply::new(
        code,
        OptionReplyBody::Info(Info::Export {
            size: entry.export.size(),
            flags: transmission_flags(&entry, style),
        }),
    )];
    if req.requests.contains(&INFO_NAME) {
        replies.push(OptionReply::new(
            code,
            OptionReplyBody::Info(Info::Name(entry.name.clone())),
        ));
    }
    // Sent whether asked for or not, as qemu-nbd does: clients that did not ask ignore it.
    replies.push(OptionReply::new(
        code,
        OptionReplyBody::Info(block_size(&entry, shared.config.max_payload)),
    ));
    replies.push(OptionReply::new(code, OptionReplyBody::Ack));
    Ok((replies, attachment))
}

fn meta_context(
    shared: &Shared,
    st: &mut State,
    code: u32,
    req: MetaContextRequest,
    set: bool,
) -> Vec<OptionReply> {
    if !st.style.structured() {
        return vec![OptionReply::error(
            code,
            REP_ERR_INVALID,
            "structured replies must be negotiated first",
        )];
    }
    if shared.registry.get(&req.export).is_none() {
        return vec![OptionReply::error(
            code,
            REP_ERR_UNKNOWN,
            format!("unknown export {:?}", req.export),
        )];
    }
    let mut selected: Vec<MetaContext> = Vec::new();
    if !set && req.queries.is_empty() {
        selected.extend(MetaContext::ALL);
    }
    for q in &req.queries {
        for c in MetaContext::matching(q, !set) {
            if !selected.contains(&c) {
                selected.push(c);
            }
        }
    }
    let mut replies = Vec::with_capacity(selected.len() + 1);
    for c in &selected {
        replies.push(OptionReply::new(
            code,
            OptionReplyBody::MetaContext {
                // LIST replies carry id 0 as the spec recommends.
                id: if set { c.id() } else { 0 },
                name: c.name().to_owned(),
            },
        ));
    }
    replies.push(OptionReply::new(code, OptionReplyBody::Ack));
    if set {
        st.meta = Some((req.export, selected));
    }
    replies
}
