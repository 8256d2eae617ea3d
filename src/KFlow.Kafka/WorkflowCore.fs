// The C# faces of Workflow.run and ErrorPolicy: plain .NET parameters (IReadOnlyList, Nullable,
// IReadOnlyDictionary, Action<string>) instead of WorkflowOptions' F# list, option and function fields.
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
    /// ignored (called from several threads), onFailure null (halt ? Halt : RestartAndReplay with
    /// Backoff.defaults; a policy given here wins over halt), onStageFailure none (overrides by stage
    /// name), maxConcurrentCalls 1,024 (async calls running at once in the workflow),
    /// maxConcurrentWrites Int32.MaxValue (sink writes running at once; no cap), maxQueuedMessages
    /// 8,192 (consumed messages waiting for their partition loops before intake holds).</summary>
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
            [<Optional; DefaultParameterValue(null: Action<string>)>] log: Action<string>,
            [<Optional>] onFailure: ErrorPolicy,
            [<Optional; DefaultParameterValue(null: IReadOnlyDictionary<string, ErrorPolicy>)>] onStageFailure:
                IReadOnlyDictionary<string, ErrorPolicy>,
            [<Optional; DefaultParameterValue(Nullable<int>())>] maxConcurrentCalls: Nullable<int>,
            [<Optional; DefaultParameterValue(Nullable<int>())>] maxConcurrentWrites: Nullable<int>,
            [<Optional; DefaultParameterValue(Nullable<int>())>] maxQueuedMessages: Nullable<int>
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
                MaxQueuedMessages =
                    defaultArg (Option.ofNullable maxQueuedMessages) o.Backpressure.MaxQueuedMessages
        }

        let options = {
            o with
                Properties = properties
                CommitInterval = defaultArg (Option.ofNullable commitInterval) o.CommitInterval
                DrainTimeout = defaultArg (Option.ofNullable drainTimeout) o.DrainTimeout
                Backpressure = backpressure
                MaxConcurrentCalls = defaultArg (Option.ofNullable maxConcurrentCalls) o.MaxConcurrentCalls
                MaxConcurrentWrites = defaultArg (Option.ofNullable maxConcurrentWrites) o.MaxConcurrentWrites
                OnFailure =
                    if not (isNull (box onFailure)) then onFailure
                    elif halt then Halt
                    else o.OnFailure
                OnStageFailure =
                    if isNull onStageFailure then
                        Map.empty
                    else
                        onStageFailure |> Seq.map (fun kv -> kv.Key, kv.Value) |> Map.ofSeq
                Log = (if isNull log then ignore else log.Invoke)
        }

        Workflow.run options pipe

/// Building error policies from C# (the F# API is the ErrorPolicy union).
[<AbstractClass; Sealed>]
type ErrorPolicyCore =
    /// <summary>Restart from the committed offsets after a backoff of <paramref name="first"/>
    /// doubling to <paramref name="max"/> (null: 1 s and 30 s), jitter 0.2.</summary>
    static member RestartAndReplay(first: Nullable<TimeSpan>, max: Nullable<TimeSpan>) : ErrorPolicy =
        RestartAndReplay(ErrorPolicyCore.Backoff(first, max, Backoff.defaults))

    /// <summary>Retry the failed write or call in place <paramref name="retries"/> more times, waiting
    /// <paramref name="first"/> doubling to <paramref name="max"/> (null: 100 ms and 5 s) between
    /// tries, then apply <paramref name="escalate"/>.</summary>
    static member RetryInPlace
        (retries: int, first: Nullable<TimeSpan>, max: Nullable<TimeSpan>, escalate: ErrorPolicy)
        : ErrorPolicy =
        let fallback = {
            Backoff.defaults with
                First = TimeSpan.FromMilliseconds 100.
                Max = TimeSpan.FromSeconds 5.
        }

        RetryInPlace(retries, ErrorPolicyCore.Backoff(first, max, fallback), escalate)

    /// Produce the failed message to `topic` with the failure in headers, then move on.
    static member DeadLetter(topic: string) : ErrorPolicy = DeadLetter topic

    /// Stop the workflow after committing the safe offsets; Completion faults.
    static member Halt() : ErrorPolicy = Halt

    /// A short readable form of the policy.
    static member Describe(policy: ErrorPolicy) : string = ErrorPolicy.describe policy

    static member private Backoff(first: Nullable<TimeSpan>, max: Nullable<TimeSpan>, fallback: Backoff) =
        let first = defaultArg (Option.ofNullable first) fallback.First

        {
            fallback with
                First = first
                Max =
                    defaultArg (Option.ofNullable max) (if first > fallback.Max then first else fallback.Max)
        }
