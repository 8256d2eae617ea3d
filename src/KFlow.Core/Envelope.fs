// Messages as they arrive from Kafka, and envelopes: a value on its way through a pipe together
// with the ack tokens of the input offsets it stands for (so finishing it can move the commit point).
namespace KFlow

open System

/// A message read from Kafka, its value already deserialised. Headers are not modelled.
type Message<'a> = {
    /// Where the message was read: topic-partition and offset.
    Position: Position
    /// The message key ("" when the Kafka key is null).
    Key: string
    /// The deserialised value.
    Value: 'a
    /// The Kafka timestamp.
    Timestamp: DateTimeOffset
}

/// Functions over Message.
[<RequireQualifiedAccess>]
module Message =
    /// A message at an offset of a topic-partition, with the Unix epoch as its timestamp.
    let create (tp: TopicPartition) (offset: int64) (key: string) (value: 'a) : Message<'a> = {
        Position = Position.create tp offset
        Key = (if isNull key then "" else key)
        Value = value
        Timestamp = DateTimeOffset.UnixEpoch
    }

    /// The same message with another timestamp.
    let withTimestamp (timestamp: DateTimeOffset) (message: Message<'a>) = {
        message with
            Timestamp = timestamp
    }

/// <summary>A value flowing through a pipe and the ack tokens it holds.</summary>
/// <remarks>Finishing an envelope (a sink wrote it, a filter dropped it, it reached the end of the
/// pipe) completes one part of each of its tokens. A map keeps the tokens, an unfold forks them,
/// an aggregate merges the tokens of all its inputs into its output.</remarks>
type Envelope<'a> = {
    /// The value.
    Value: 'a
    /// The ack tokens this envelope holds, one part each.
    Tokens: Token list
    /// The key of the first input message, or the key set by `mfd`.
    Key: string
    /// The position of the first input message this envelope stands for.
    Position: Position
    /// The timestamp of the first input message.
    Timestamp: DateTimeOffset
}

/// Functions over Envelope.
[<RequireQualifiedAccess>]
module Envelope =
    /// The envelope of a delivered message holding the token the ledger gave it.
    let ofMessage (token: Token) (message: Message<'a>) : Envelope<'a> = {
        Value = message.Value
        Tokens = [ token ]
        Key = message.Key
        Position = message.Position
        Timestamp = message.Timestamp
    }

    /// The same envelope (same tokens) with its value mapped.
    let map (f: 'a -> 'b) (envelope: Envelope<'a>) : Envelope<'b> = {
        Value = f envelope.Value
        Tokens = envelope.Tokens
        Key = envelope.Key
        Position = envelope.Position
        Timestamp = envelope.Timestamp
    }

    /// The same envelope (same tokens) with another value.
    let withValue (value: 'b) (envelope: Envelope<'a>) : Envelope<'b> = map (fun _ -> value) envelope

    /// The offset of the first input message.
    let offset (envelope: Envelope<'a>) = envelope.Position.Offset

    /// <summary>One envelope standing for all of <paramref name="envelopes"/> (in order): it holds
    /// all their tokens, and the key, position and timestamp of the first. At least one is needed.</summary>
    let merge (value: 'b) (envelopes: Envelope<'a> list) : Envelope<'b> =
        match envelopes with
        | [] -> invalidArgWith "envelopes" "Envelope.merge needs at least one envelope to take the tokens of."
        | first :: _ -> {
            Value = value
            Tokens = envelopes |> List.collect (fun e -> e.Tokens)
            Key = first.Key
            Position = first.Position
            Timestamp = first.Timestamp
          }

    /// The envelope with its value boxed (how interpreters carry values of any type).
    let box (envelope: Envelope<'a>) : Envelope<obj> = map Operators.box envelope

    /// The envelope with its value unboxed.
    let unbox<'a> (envelope: Envelope<obj>) : Envelope<'a> = map Operators.unbox<'a> envelope
