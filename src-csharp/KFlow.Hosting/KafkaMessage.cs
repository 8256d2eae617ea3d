// What a workflow's source yields: one Kafka message, its key and value with where it came from.
// Plain C# records, so the facade's public surface holds no F# type.
using System;

namespace KFlow.Hosting;

/// <summary>A Kafka message as the source of a workflow yields it.</summary>
/// <param name="Key">The message key as UTF-8 text; "" when the key is null.</param>
/// <param name="Value">The value bytes; null for a tombstone.</param>
/// <param name="Partition">The partition the message was read from.</param>
/// <param name="Offset">The message's offset in its partition.</param>
/// <param name="Timestamp">The message's timestamp.</param>
public sealed record KafkaMessage(string Key, byte[]? Value, int Partition, long Offset, DateTimeOffset Timestamp);

/// <summary>A Kafka message whose value was deserialized (System.Text.Json by default).</summary>
/// <typeparam name="TValue">The value's type.</typeparam>
/// <param name="Key">The message key as UTF-8 text; "" when the key is null.</param>
/// <param name="Value">The deserialized value; null for a tombstone or a JSON <c>null</c>.</param>
/// <param name="Partition">The partition the message was read from.</param>
/// <param name="Offset">The message's offset in its partition.</param>
/// <param name="Timestamp">The message's timestamp.</param>
public sealed record KafkaMessage<TValue>(
    string Key,
    TValue? Value,
    int Partition,
    long Offset,
    DateTimeOffset Timestamp);
