// The entry point of the fluent API: Workflow.FromKafka(topic, groupId) starts a Flow. (Not named
// KFlow: the F# assemblies' namespace KFlow would hide a class of that name in C# code.)
using System;
using System.Collections.Immutable;
using System.Text.Json;
using KFlow.Kafka;

namespace KFlow.Hosting;

/// <summary>Starts workflow pipelines: <c>Workflow.FromKafka(topic, groupId).Map(…)…To(…).Build()</c>.</summary>
public static class Workflow
{
    /// <summary>A pipeline reading <paramref name="topic"/> in consumer group <paramref name="groupId"/>;
    /// each message arrives as a <see cref="KafkaMessage"/> (key, value bytes, partition, offset,
    /// timestamp). The bootstrap servers come from <see cref="KafkaSettings.BootstrapServers"/>.</summary>
    public static Flow<KafkaMessage> FromKafka(string topic, string groupId) =>
        new(topic ?? "", groupId ?? "",
            _ => PipeCore.MapMessage(PipeCore.Source(),
                new Func<string, int, long, DateTimeOffset, byte[], KafkaMessage>(
                    (key, partition, offset, timestamp, value) => new KafkaMessage(key, value, partition, offset, timestamp))),
            ImmutableList<string>.Empty);

    /// <summary>As <see cref="FromKafka(string, string)"/>, the values deserialized from JSON with
    /// System.Text.Json (<paramref name="json"/>; default <see cref="JsonSerializerDefaults.Web"/>:
    /// camelCase, case-insensitive). A value that is not valid JSON for <typeparamref name="TValue"/>
    /// makes the stage fail (the message is not skipped; see Flow's remarks).</summary>
    public static Flow<KafkaMessage<TValue>> FromKafka<TValue>(
        string topic,
        string groupId,
        JsonSerializerOptions? json = null)
    {
        var options = json ?? new JsonSerializerOptions(JsonSerializerDefaults.Web);
        return FromKafka(topic, groupId).Map(m => new KafkaMessage<TValue>(
            m.Key,
            m.Value is null ? default : JsonSerializer.Deserialize<TValue>(m.Value, options),
            m.Partition,
            m.Offset,
            m.Timestamp));
    }
}
