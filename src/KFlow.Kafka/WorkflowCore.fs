// The C# face of Workflow.run: plain .NET parameters (IReadOnlyList, IReadOnlyDictionary, Nullable,
// Action<string>) instead of WorkflowOptions' F# list, option and function fields.
namespace KFlow.Kafka

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open KFlow

/// Runs workflows from C#; the F# API is `Workflow.run` with `WorkflowOptions`.
[<AbstractClass; Sealed>]
type WorkflowCore =
    /// <summary>Starts a workflow (see Workflow.run): consumes <paramref name="topics"/> in group
    /// <paramref name="groupId"/> and runs <paramref name="pipe"/> on every assigned partition.
    /// ArgumentException (naming the setting) on an invalid value. A null optional keeps the default:
    /// properties none, commitInterval 5 s, maxInFlightMessages 50,000, maxOpenOffsetsPerPartition
    /// 20,000, drainTimeout 10 s, halt false (restart from the committed offsets with backoff), log
    /// ignored (called from several threads).</summary>
    static member Run
        (
            name: string,
            bootstrapServers: string,
            groupId: string,
            topics: IReadOnlyList<string>,
            pipe: Pipe<byte[], 'o>,
            [<Optional; DefaultParameterValue(null: IReadOnlyDictionary<string, string>)>] properties:
                IReadOnlyDictionary<string, string>,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] commitInterval: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(Nullable<int>())>] maxInFlightMessages: Nullable<int>,
            [<Optional; DefaultParameterValue(Nullable<int>())>] maxOpenOffsetsPerPartition: Nullable<int>,
            [<Optional; DefaultParameterValue(Nullable<TimeSpan>())>] drainTimeout: Nullable<TimeSpan>,
            [<Optional; DefaultParameterValue(false)>] halt: bool,
            [<Optional; DefaultParameterValue(null: Action<string>)>] log: Action<string>
        ) : WorkflowHandle =
        let topics = if isNull topics then [] else List.ofSeq topics
        let o = WorkflowOptions.create name bootstrapServers groupId topics

        let properties =
            if isNull properties then
                []
            else
                properties |> Seq.map (fun kv -> kv.Key, kv.Value) |> List.ofSeq

        let backpressure = {
            o.Backpressure with
                MaxInFlightMessages =
                    defaultArg (Option.ofNullable maxInFlightMessages) o.Backpressure.MaxInFlightMessages
                MaxOpenOffsetsPerPartition =
                    defaultArg
                        (Option.ofNullable maxOpenOffsetsPerPartition)
                        o.Backpressure.MaxOpenOffsetsPerPartition
        }

        let options = {
            o with
                Properties = properties
                CommitInterval = defaultArg (Option.ofNullable commitInterval) o.CommitInterval
                DrainTimeout = defaultArg (Option.ofNullable drainTimeout) o.DrainTimeout
                Backpressure = backpressure
                OnFailure = (if halt then Halt else o.OnFailure)
                Log = (if isNull log then ignore else log.Invoke)
        }

        Workflow.run options pipe
