// A compacted partition on the embedded cluster. librdkafka's mock broker has no log compaction, so
// this writes a record batch as compaction leaves one (records at offset deltas with holes, the
// batch's last offset delta kept) with a raw Produce request; the mock keeps the batch's bytes and
// reserves the offsets of its record count, here the whole span, so consumers read offsets with gaps.
module KFlow.Kafka.Tests.CompactedLog

open System
open System.Buffers.Binary
open System.IO
open System.Net.Sockets
open System.Text

/// CRC-32C (Castagnoli), the checksum of a record batch.
let private crcTable =
    Array.init 256 (fun n ->
        let mutable c = uint32 n

        for _ in 0..7 do
            c <-
                if c &&& 1u <> 0u then
                    0x82F63B78u ^^^ (c >>> 1)
                else
                    c >>> 1

        c)

let crc32c (data: byte[]) =
    let mutable crc = 0xFFFFFFFFu

    for b in data do
        crc <- crcTable[int ((crc ^^^ uint32 b) &&& 0xFFu)] ^^^ (crc >>> 8)

    crc ^^^ 0xFFFFFFFFu

/// Big-endian and varint writes of the Kafka protocol.
type private Writer() =
    let stream = new MemoryStream()

    member _.Bytes(b: byte[]) = stream.Write(b, 0, b.Length)
    member _.Int8(v: sbyte) = stream.WriteByte(byte v)

    /// A fixed-size integer's bytes (as BitConverter gives them), written big-endian.
    member private this.BigEndian(bytes: byte[]) =
        if BitConverter.IsLittleEndian then
            Array.Reverse bytes

        this.Bytes bytes

    member this.Int16(v: int16) = this.BigEndian(BitConverter.GetBytes v)
    member this.Int32(v: int) = this.BigEndian(BitConverter.GetBytes v)
    member this.UInt32(v: uint32) = this.BigEndian(BitConverter.GetBytes v)
    member this.Int64(v: int64) = this.BigEndian(BitConverter.GetBytes v)

    /// A zigzag varint (Kafka's varint and varlong).
    member _.VarLong(v: int64) =
        let mutable z = uint64 ((v <<< 1) ^^^ (v >>> 63))

        while z >= 0x80UL do
            stream.WriteByte(byte (z &&& 0x7FUL ||| 0x80UL))
            z <- z >>> 7

        stream.WriteByte(byte z)

    member this.VarInt(v: int) = this.VarLong(int64 v)

    member this.String(s: string) =
        let b = Encoding.UTF8.GetBytes s
        this.Int16(int16 b.Length)
        this.Bytes b

    member _.ToArray() = stream.ToArray()

/// One record of a v2 batch at `offsetDelta`.
let private record (offsetDelta: int) (key: string) (value: string) =
    let body = Writer()
    body.Int8 0y // attributes
    body.VarLong 0L // timestamp delta
    body.VarInt offsetDelta
    let k = Encoding.UTF8.GetBytes key
    body.VarInt k.Length
    body.Bytes k
    let v = Encoding.UTF8.GetBytes value
    body.VarInt v.Length
    body.Bytes v
    body.VarInt 0 // headers
    let bytes = body.ToArray()
    let framed = Writer()
    framed.VarInt bytes.Length
    framed.Bytes bytes
    framed.ToArray()

/// <summary>A record batch spanning <paramref name="span"/> offsets that holds only the given
/// records (offset delta, key, value), as log compaction leaves it: its last offset delta is
/// span - 1 whatever records remain. Its record count is the span, which the mock broker reserves
/// (a compacted batch on a real broker counts only its records; readers go by the bytes and the
/// last offset delta either way).</summary>
let batch (span: int) (records: (int * string * string) list) =
    let now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()
    let tail = Writer()
    tail.Int16 0s // attributes: no compression, not transactional
    tail.Int32(span - 1) // last offset delta
    tail.Int64 now // base timestamp
    tail.Int64 now // max timestamp
    tail.Int64 -1L // producer id
    tail.Int16 -1s // producer epoch
    tail.Int32 -1 // base sequence
    tail.Int32 span

    for delta, key, value in records do
        tail.Bytes(record delta key value)

    let tail = tail.ToArray()
    let header = Writer()
    header.Int64 0L // base offset (the broker sets it)
    header.Int32(4 + 1 + 4 + tail.Length) // batch length: leader epoch, magic, crc, the rest
    header.Int32 -1 // partition leader epoch
    header.Int8 2y // magic
    header.UInt32(crc32c tail)
    header.Bytes tail
    header.ToArray()

/// Reads exactly `count` bytes.
let private readExactly (stream: Stream) (count: int) =
    let buffer = Array.zeroCreate count
    let mutable read = 0

    while read < count do
        let n = stream.Read(buffer, read, count - read)

        if n = 0 then
            failwith "The broker closed the connection before answering the Produce request."

        read <- read + n

    buffer

/// <summary>Writes a record batch to partition <paramref name="partition"/> of
/// <paramref name="topic"/> with a Produce request (version 3, acks 1) sent to
/// <paramref name="broker"/> ("host:port", the partition's leader); fails with the broker's error
/// code if it refuses it.</summary>
let produceBatch (broker: string) (topic: string) (partition: int) (records: byte[]) =
    let host, port =
        let first = broker.Split(',')[0]

        match first.Trim().Split(':') with
        | [| h; p |] -> h, int p
        | _ -> failwithf "A broker address is host:port (got %s)." broker

    use client = new TcpClient(host, port)
    use stream = client.GetStream()
    let request = Writer()
    request.Int16 0s // api key: Produce
    request.Int16 3s // api version
    request.Int32 1 // correlation id
    request.String "kflow-compacted-log" // client id
    request.Int16 -1s // transactional id: null
    request.Int16 1s // acks
    request.Int32 10_000 // timeout ms
    request.Int32 1 // topics
    request.String topic
    request.Int32 1 // partitions
    request.Int32 partition
    request.Int32 records.Length
    request.Bytes records
    let body = request.ToArray()
    let framed = Writer()
    framed.Int32 body.Length
    framed.Bytes body
    let bytes = framed.ToArray()
    stream.Write(bytes, 0, bytes.Length)
    let size = BinaryPrimitives.ReadInt32BigEndian(ReadOnlySpan(readExactly stream 4))
    let response = readExactly stream size
    // correlation id, topics count, topic name, partitions count, partition index, error code
    let nameLength =
        int (BinaryPrimitives.ReadInt16BigEndian(ReadOnlySpan(response, 8, 2)))

    let at = 8 + 2 + nameLength + 4 + 4
    let error = BinaryPrimitives.ReadInt16BigEndian(ReadOnlySpan(response, at, 2))

    if error <> 0s then
        failwithf "The broker refused the compacted batch for %s [%d]: error code %d." topic partition error
