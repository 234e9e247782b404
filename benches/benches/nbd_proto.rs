//! The codec on the hot path: decode a WRITE request header, encode its simple reply, encode the
//! head of a structured READ reply, decode an NBD_OPT_GO.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nbd_server::proto::handshake::{ClientOption, InfoRequest, OptionHeader};
use nbd_server::proto::reply::{Chunk, ChunkPayload, SimpleReply};
use nbd_server::proto::request::{HeaderStyle, Request};
use nbd_server::proto::{self, request::decode_stream};

fn write_header(cookie: u64) -> Request {
    Request {
        flags: 0,
        command: proto::CMD_WRITE,
        cookie,
        offset: cookie << 18,
        length: 256 << 10,
    }
}

fn requests(c: &mut Criterion) {
    let mut one = BytesMut::new();
    write_header(7)
        .encode(HeaderStyle::Simple, &mut one)
        .unwrap();
    let mut ext = BytesMut::new();
    write_header(7)
        .encode(HeaderStyle::Extended, &mut ext)
        .unwrap();
    // 64 headers back to back, as they sit in a read buffer when nbdcopy pipelines (payloads
    // left out: decode_stream skips them by length, which would measure memcpy).
    let mut g = c.benchmark_group("nbd_proto/request_decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("compact", |b| {
        b.iter(|| Request::decode(black_box(&one), HeaderStyle::Simple))
    });
    g.bench_function("extended", |b| {
        b.iter(|| Request::decode(black_box(&ext), HeaderStyle::Extended))
    });
    g.finish();

    let mut stream = BytesMut::new();
    for i in 0..64 {
        Request {
            flags: 0,
            command: proto::CMD_FLUSH,
            cookie: i,
            offset: 0,
            length: 0,
        }
        .encode(HeaderStyle::Simple, &mut stream)
        .unwrap();
    }
    let mut g = c.benchmark_group("nbd_proto/request_stream");
    g.throughput(Throughput::Elements(64));
    g.bench_function("64_headers", |b| {
        b.iter(|| decode_stream(black_box(&stream), HeaderStyle::Simple, 32 << 20))
    });
    g.finish();
}

fn replies(c: &mut Criterion) {
    let mut out = BytesMut::with_capacity(4096);
    let mut g = c.benchmark_group("nbd_proto/reply_encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("simple", |b| {
        b.iter(|| {
            out.clear();
            SimpleReply {
                error: 0,
                cookie: black_box(42),
            }
            .encode(&mut out);
        })
    });
    let data = Bytes::from(vec![0x5au8; 256 << 10]);
    g.bench_function("structured_read_head", |b| {
        b.iter(|| {
            out.clear();
            let chunk = Chunk {
                flags: proto::REPLY_FLAG_DONE,
                cookie: black_box(42),
                offset: 0,
                payload: ChunkPayload::OffsetData {
                    offset: 1 << 20,
                    data: data.clone(),
                },
            };
            chunk
                .encode_head(HeaderStyle::Structured, &mut out)
                .unwrap()
        })
    });
    g.finish();
}

fn options(c: &mut Criterion) {
    let mut buf = BytesMut::new();
    ClientOption::Go(InfoRequest {
        name: "backup-1234/disk0".into(),
        requests: vec![proto::INFO_BLOCK_SIZE],
    })
    .encode(&mut buf)
    .unwrap();
    let data = buf.split_off(OptionHeader::LEN);
    c.bench_function("nbd_proto/option_decode/go", |b| {
        b.iter(|| {
            let (h, _) = OptionHeader::decode(black_box(&buf)).unwrap().unwrap();
            ClientOption::decode(h.option, black_box(&data)).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(std::time::Duration::from_secs(2));
    targets = requests, replies, options
}
criterion_main!(benches);
