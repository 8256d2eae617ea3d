// The C# face of KafkaSink: Func key/value mappings and plain producer properties in, batches as
// IReadOnlyList, so the C# facade builds no F# record, list or function.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open System.Threading.Tasks

/// Creating and using Kafka sinks from C#; the F# API is `KafkaSinkOptions` + `KafkaSink`.
[<AbstractClass; Sealed>]
type KafkaSinkCore =
    /// <summary>Creates a Kafka sink (one idempotent producer) writing to <paramref name="topic"/>
    /// with the key and value of each record; <paramref name="properties"/> are librdkafka producer
    /// properties (default none). Defaults otherwise as KafkaSinkOptions.create: murmur2_random
    /// partitioning, Confluent's serializers, a 10 s flush on dispose. ArgumentException naming the
    /// setting on an invalid option.</summary>
    static member Create
        (
            bootstrapServers: string,
            topic: string,
            key: Func<'a, 'k>,
            value: Func<'a, 'v>,
            [<Optional; DefaultParameterValue(null: IReadOnlyDictionary<string, string>)>] properties:
                IReadOnlyDictionary<string, string>
        ) : KafkaSink<'a, 'k, 'v> =
        if isNull key then
            raise (ArgumentNullException("key", "Give the key mapping of the Kafka sink."))

        if isNull value then
            raise (ArgumentNullException("value", "Give the value mapping of the Kafka sink."))

        let options = KafkaSinkOptions.create bootstrapServers topic key.Invoke value.Invoke

        if not (isNull properties) then
            for kv in properties do
                options.Producer.Set(kv.Key, kv.Value)

        KafkaSink.create options

    /// Produces a batch in order; the Task succeeds when every message has a successful delivery report.
    static member WriteAsync(sink: KafkaSink<'a, 'k, 'v>, batch: IReadOnlyList<'a>) : Task =
        sink.WriteAsync(List.ofSeq batch)
