// Turning a message's value bytes into a typed value as a named pipe stage, so a bad value (invalid
// JSON, wrong shape, empty) fails with its topic, partition, offset and reason and goes through the
// error policies like any stage (override the policy of the stage "deserialize").
namespace KFlow.Kafka

open System
open System.Text.Json
open KFlow

/// A message whose value could not be deserialised: where it is and why.
type DeserializationException(position: Position, reason: string, inner: exn) =
    inherit
        Exception(
            $"Cannot deserialise the value of {position.TopicPartition.Topic}[{position.TopicPartition.Partition}] at offset {position.Offset}: {reason}",
            inner
        )

    /// The topic, partition and offset of the message.
    member _.Position = position
    /// Why the value was refused.
    member _.Reason = reason

/// Deserialising stages.
[<RequireQualifiedAccess>]
module Deserialize =
    /// The name of the stages built here unless one is given: "deserialize". Set a policy for it with
    /// WorkflowOptions.OnStageFailure (e.g. DeadLetter).
    [<Literal>]
    let StageName = "deserialize"

    /// <summary>A stage named <paramref name="name"/> that parses each value with
    /// <paramref name="parse"/>. A null or empty value, or an exception of <paramref name="parse"/>,
    /// fails the stage with a DeserializationException naming the topic, partition, offset and reason
    /// (the error policy of <paramref name="name"/> applies).</summary>
    let withName (name: string) (parse: byte[] -> 'T) (pipe: Pipe<'i, byte[]>) : Pipe<'i, 'T> =
        let convert (envelope: Envelope<byte[]>) =
            let value = envelope.Value

            if isNull value || value.Length = 0 then
                raise (DeserializationException(envelope.Position, "the value is empty", null))

            let parsed =
                try
                    parse value
                with ex ->
                    raise (DeserializationException(envelope.Position, ex.Message, ex))

            if isNull (box parsed) then
                raise (DeserializationException(envelope.Position, "the value deserialises to null", null))

            parsed

        let step _ (event: Event<byte[]>) () =
            match event with
            | Message envelope -> (), Output.emit (Envelope.withValue (convert envelope) envelope)
            | _ -> (), Output.none

        pipe |> Pipe.via (Stage.create name () step)

    /// A stage named "deserialize" that parses each value with `parse` (see withName).
    let parseWith (parse: byte[] -> 'T) (pipe: Pipe<'i, byte[]>) : Pipe<'i, 'T> =
        withName StageName parse pipe

    /// <summary>A stage named "deserialize" that reads each value as UTF-8 JSON of type
    /// <typeparamref name="T"/> (System.Text.Json, case-insensitive property names), e.g.
    /// <c>Pipe.source&lt;byte[]&gt; |> Deserialize.json&lt;_, Order&gt;</c>. Invalid JSON, a
    /// shape that does not fit, JSON null or an empty value fail it with a DeserializationException.</summary>
    let json<'i, 'T> (pipe: Pipe<'i, byte[]>) : Pipe<'i, 'T> =
        let settings = JsonSerializerOptions(PropertyNameCaseInsensitive = true)

        let parse (bytes: byte[]) : 'T =
            JsonSerializer.Deserialize<'T>(ReadOnlySpan<byte>(bytes), settings)

        parseWith parse pipe
