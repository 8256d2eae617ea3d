// Signature of messages and envelopes: the values that flow through a pipe with their ack tokens.
namespace KFlow

/// A message read from Kafka, its value already deserialised. Headers are not modelled.
type Message<'a> = {

    /// Where the message was read: topic-partition and offset.
    Position: Position

    /// The message key ("" when the Kafka key is null).
    Key: string

    /// The deserialised value.
    Value: 'a

    /// The Kafka timestamp.
    Timestamp: System.DateTimeOffset
}

/// Functions over Message.
[<RequireQualifiedAccess>]
module Message =

    /// A message at an offset of a topic-partition, with the Unix epoch as its timestamp.
    val create: tp: TopicPartition -> offset: int64 -> key: string -> value: 'a -> Message<'a>

    /// The same message with another timestamp.
    val withTimestamp: timestamp: System.DateTimeOffset -> message: Message<'a> -> Message<'a>

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
    Timestamp: System.DateTimeOffset
}

/// Functions over Envelope.
[<RequireQualifiedAccess>]
module Envelope =

    /// The envelope of a delivered message holding the token the ledger gave it.
    val ofMessage: token: Token -> message: Message<'a> -> Envelope<'a>

    /// The same envelope (same tokens) with its value mapped.
    val map: f: ('a -> 'b) -> envelope: Envelope<'a> -> Envelope<'b>

    /// The same envelope (same tokens) with another value.
    val withValue: value: 'b -> envelope: Envelope<'a> -> Envelope<'b>

    /// The offset of the first input message.
    val offset: envelope: Envelope<'a> -> int64

    /// <summary>One envelope standing for all of <paramref name="envelopes"/> (in order): it holds
    /// all their tokens, and the key, position and timestamp of the first. At least one is needed.</summary>
    val merge: value: 'b -> envelopes: Envelope<'a> list -> Envelope<'b>

    /// The envelope with its value boxed (how interpreters carry values of any type).
    val box: envelope: Envelope<'a> -> Envelope<obj>

    /// The envelope with its value unboxed.
    val unbox: envelope: Envelope<obj> -> Envelope<'a>
