// The settings of a workflow: its Kafka source, commit interval, backpressure limits, clock, drain
// timeout and failure policy, with their defaults, validation and the consumer configuration built
// from them.
namespace KFlow.Kafka

open System
open Confluent.Kafka

/// Where a consumer group with no committed offset starts reading.
type OffsetReset =
    /// At the oldest retained message (KFlow's default: nothing produced before the first start is skipped).
    | Earliest
    /// At the end: only messages produced from now on (librdkafka's default).
    | Latest

/// The backpressure limits. Intake pauses when a limit is reached and resumes when the load is down
/// to ResumeAt of every limit (hysteresis). A message is in flight from the moment the consumer
/// hands it to the pipe until its offset is finished (sunk, filtered out or completed).
type BackpressureOptions = {
    /// Messages in flight per workflow before intake stops: the consumer thread holds (stops calling
    /// Consume), and pauses every partition if the limit still holds after 500 ms. Default 50,000.
    MaxInFlightMessages: int
    /// Key + value bytes in flight per workflow before intake stops (as MaxInFlightMessages).
    /// Default 64 MiB.
    MaxInFlightBytes: int64
    /// Intake resumes when the load is at or below this fraction of each limit. Default 0.5.
    ResumeAt: float
    /// Open (unfinished) offsets per partition before that partition pauses. Default 20,000.
    MaxOpenOffsetsPerPartition: int
    /// Messages consumed and handed to their partition loops but not yet pushed into the pipe (the
    /// loops' queues, all partitions together) before intake holds (checked after each burst of at
    /// most 512 consumed messages, so the queues may pass it by one burst); it resumes at half of it,
    /// and pauses every partition if the limit still holds after 500 ms. Messages waiting there are
    /// .NET objects the garbage collector walks and copies, while those librdkafka prefetched wait in
    /// its native queue. Default 8,192.
    MaxQueuedMessages: int
    /// When intake (of the workflow or of one partition) has been paused this long without any
    /// message finishing, the pipes concerned receive Flush: aggregates emit what they hold and
    /// demux substreams are dropped as after an idle eviction, so buffers that only new input
    /// would fill cannot keep intake paused. Default 2 s.
    FlushWhenStalled: TimeSpan
}

/// The settings of one workflow. Build them with `WorkflowOptions.create` and `{ o with … }`.
[<NoEquality; NoComparison>]
type WorkflowOptions = {
    /// The workflow's name, used in logs and as the consumer's client.id. Required.
    Name: string
    /// The Kafka bootstrap.servers list, e.g. "host1:9092,host2:9092". Required.
    BootstrapServers: string
    /// The topics to consume. Required, at least one.
    Topics: string list
    /// The consumer group (group.id); instances with the same group share the partitions. Required.
    GroupId: string
    /// Where a group with no committed offset starts. Default Earliest (librdkafka's is latest).
    AutoOffsetReset: OffsetReset
    /// Any other librdkafka consumer property, passed through (TLS, SASL,
    /// partition.assignment.strategy, session.timeout.ms, …). Default none. The properties the
    /// runtime owns (group.id, bootstrap.servers, enable.auto.commit, enable.auto.offset.store,
    /// auto.commit.interval.ms, auto.offset.reset) are refused here: use the fields above. A
    /// property given here overrides KFlow's own consumer defaults (`WorkflowOptions.consumerDefaults`:
    /// fetch.queue.backoff.ms 10 ms, librdkafka's default 1000 ms; and
    /// dotnet.consumer.consume.result.fields "topic,timestamp", plus "headers" when a policy
    /// dead-letters; a value given here must keep those).
    Properties: (string * string) list
    /// How often the stored commit points are committed to Kafka (auto.commit.interval.ms).
    /// Default 5 s (librdkafka's default too). Revokes and stops also commit synchronously.
    CommitInterval: TimeSpan
    /// Backpressure limits. Default BackpressureOptions of `WorkflowOptions.backpressure`.
    Backpressure: BackpressureOptions
    /// How often every partition's pipe receives a Tick (age-based buffers, idle substream eviction).
    /// Default 1 s.
    TickInterval: TimeSpan
    /// How long a revoke or a stop waits for in-flight sink writes and async calls before it commits
    /// what is finished and lets go; a whole stop (drain, commit, leaving the group) takes at most
    /// twice this. Default 10 s.
    DrainTimeout: TimeSpan
    /// Async calls (of every async map, in every partition and substream) running at once in the
    /// workflow: a call waits for a free slot before the user's function starts and frees it when the
    /// function's task ends. Each try of a retry in place takes a slot; its backoff wait holds none.
    /// Must be ≥ 1; Int32.MaxValue removes the cap. Default 1,024.
    MaxConcurrentCalls: int
    /// Sink writes (of every sink, in every partition and substream) running at once in the
    /// workflow, counted like MaxConcurrentCalls. Must be ≥ 1. Default Int32.MaxValue: no cap beyond
    /// the in-flight limits of Backpressure.
    MaxConcurrentWrites: int
    /// What a failure does (ErrorPolicy). Default RestartAndReplay Backoff.defaults.
    OnFailure: ErrorPolicy
    /// Policies of single stages by name (a stage's, sink's or async map's name), overriding
    /// OnFailure. Default none.
    OnStageFailure: Map<string, ErrorPolicy>
    /// Retries in place of a failed sink write before the sink's policy applies (a transient failure:
    /// connection lost, timeout), unless that policy is a RetryInPlace of its own. 0 disables them.
    /// Default 3.
    SinkRetries: int
    /// The backoff between those retries. Default 100 ms doubling to 5 s, jitter 0.2.
    SinkRetryBackoff: Backoff
    /// How long the start waits for the cluster to answer (bootstrap servers reachable, topics
    /// known) before Completion faults with an error naming the setting. Default 30 s.
    StartTimeout: TimeSpan
    /// Receives the runtime's log lines (assignments, revokes, pauses, failures, restarts, refused
    /// completions, librdkafka warnings). Called from the consumer thread and the partition loops;
    /// keep it quick and thread-safe. Default ignores them.
    Log: string -> unit
}

/// Building and checking workflow options.
[<RequireQualifiedAccess>]
module WorkflowOptions =
    /// The default backpressure limits.
    let backpressure = {
        MaxInFlightMessages = 50_000
        MaxInFlightBytes = 64L * 1024L * 1024L
        ResumeAt = 0.5
        MaxOpenOffsetsPerPartition = 20_000
        MaxQueuedMessages = 8_192
        FlushWhenStalled = TimeSpan.FromSeconds 2.
    }

    /// Options with every default: name, bootstrap servers, group and topics given.
    let create (name: string) (bootstrapServers: string) (groupId: string) (topics: string list) = {
        Name = name
        BootstrapServers = bootstrapServers
        Topics = topics
        GroupId = groupId
        AutoOffsetReset = Earliest
        Properties = []
        CommitInterval = TimeSpan.FromSeconds 5.
        Backpressure = backpressure
        TickInterval = TimeSpan.FromSeconds 1.
        DrainTimeout = TimeSpan.FromSeconds 10.
        MaxConcurrentCalls = 1024
        MaxConcurrentWrites = Int32.MaxValue
        OnFailure = ErrorPolicy.defaults
        OnStageFailure = Map.empty
        SinkRetries = 3
        SinkRetryBackoff = {
            First = TimeSpan.FromMilliseconds 100.
            Max = TimeSpan.FromSeconds 5.
            Jitter = 0.2
        }
        StartTimeout = TimeSpan.FromSeconds 30.
        Log = ignore
    }

    /// <summary>The librdkafka consumer properties KFlow sets to other values than librdkafka's
    /// defaults; a property of the same name in Properties overrides each.
    /// <list type="bullet">
    /// <item>fetch.queue.backoff.ms 10 (librdkafka default 1000): once a partition's local queue holds
    /// queued.min.messages (100,000) or queued.max.messages.kbytes (64 MiB), librdkafka postpones its
    /// next fetch by this long. At 1,000 ms a consumer that empties its queue faster than that sits
    /// idle for the rest of the second: on the embedded cluster a plain Confluent.Kafka loop read
    /// 100,000 messages in ~150 ms, then waited ~850 ms, over and over (118,000 msgs/s; 593,000 with
    /// 10 ms; docs/benchmarks.md). Memory stays bounded by the same queue limits; the cost is a check
    /// every 10 ms per partition while its queue is full.</item>
    /// </list></summary>
    let consumerDefaults: (string * string) list = [ "fetch.queue.backoff.ms", "10" ]

    /// Confluent.Kafka's property naming the ConsumeResult fields it fills (all by default).
    [<Literal>]
    let ResultFields = "dotnet.consumer.consume.result.fields"

    /// The workflow's error policies: OnFailure and its overrides by stage.
    let policies (o: WorkflowOptions) = {
        Default = o.OnFailure
        Stages = o.OnStageFailure
    }

    /// The ConsumeResult fields the runtime reads: topic and timestamp always, headers only to
    /// dead-letter a message with them (a dead letter copies the message's headers).
    let private neededFields (o: WorkflowOptions) =
        if ErrorPolicies.deadLetters (policies o) then
            [ "topic"; "timestamp"; "headers" ]
        else
            [ "topic"; "timestamp" ]

    /// The librdkafka properties the runtime sets itself, with the option to use instead.
    let private owned =
        dict [
            "group.id", "WorkflowOptions.GroupId"
            "bootstrap.servers", "WorkflowOptions.BootstrapServers"
            "metadata.broker.list", "WorkflowOptions.BootstrapServers"
            "enable.auto.commit", "nothing: the runtime commits on CommitInterval and on revoke/stop"
            "enable.auto.offset.store", "nothing: the runtime stores the ledger's commit points"
            "auto.commit.interval.ms", "WorkflowOptions.CommitInterval"
            "auto.offset.reset", "WorkflowOptions.AutoOffsetReset"
        ]

    let private blank (s: string) = String.IsNullOrWhiteSpace s

    /// <summary>Checks every setting and returns the options; raises ArgumentException with a
    /// sentence naming the setting and what to do.</summary>
    let validate (o: WorkflowOptions) =
        if blank o.Name then
            invalidSetting
                "Name"
                "WorkflowOptions.Name must not be empty; name the workflow (it appears in logs)."

        if blank o.BootstrapServers then
            invalidSetting
                "BootstrapServers"
                "WorkflowOptions.BootstrapServers must not be empty; give the Kafka bootstrap.servers list, e.g. \"localhost:9092\"."

        if isNull (box o.Topics) || List.isEmpty o.Topics || o.Topics |> List.exists blank then
            invalidSetting "Topics" "WorkflowOptions.Topics must list at least one topic, none of them empty."

        if blank o.GroupId then
            invalidSetting
                "GroupId"
                "WorkflowOptions.GroupId must not be empty; set the consumer group (group.id)."

        for key, value in o.Properties do
            match owned.TryGetValue key with
            | true, instead ->
                invalidSetting
                    "Properties"
                    $"WorkflowOptions.Properties must not set '{key}': the runtime owns it; set {instead}."
            | _ -> ()

            if key = ResultFields then
                let given =
                    (if isNull value then "" else value).Split(',')
                    |> Array.map (fun f -> f.Trim().ToLowerInvariant())

                if not (Array.contains "all" given) then
                    match neededFields o |> List.filter (fun f -> not (Array.contains f given)) with
                    | [] -> ()
                    | missing ->
                        let missing = String.Join(", ", missing)

                        invalidSetting
                            "Properties"
                            $"WorkflowOptions.Properties sets '{ResultFields}' to '{value}', without {missing}: the runtime reads the topic and timestamp of every message, and the headers of those it dead-letters; add them or leave the property out (KFlow sets it to what it needs)."

        let positive (name: string) (t: TimeSpan) (what: string) =
            if t <= TimeSpan.Zero then
                invalidSetting name $"WorkflowOptions.{name} must be > 0 (got {t}); it is {what}."

        positive "CommitInterval" o.CommitInterval "how often stored commit points are committed"
        positive "TickInterval" o.TickInterval "how often the pipes receive a Tick"
        positive "DrainTimeout" o.DrainTimeout "how long a revoke or stop waits for in-flight work"

        let b = o.Backpressure

        if b.MaxInFlightMessages < 1 then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.MaxInFlightMessages must be ≥ 1 (got {b.MaxInFlightMessages})."

        if b.MaxInFlightBytes < 1L then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.MaxInFlightBytes must be ≥ 1 (got {b.MaxInFlightBytes})."

        if b.MaxOpenOffsetsPerPartition < 1 then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.MaxOpenOffsetsPerPartition must be ≥ 1 (got {b.MaxOpenOffsetsPerPartition})."

        if b.MaxQueuedMessages < 1 then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.MaxQueuedMessages must be ≥ 1 (got {b.MaxQueuedMessages})."

        if b.FlushWhenStalled <= TimeSpan.Zero then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.FlushWhenStalled must be > 0 (got {b.FlushWhenStalled}); use a long time to flush only on revoke, stop and idle eviction."

        if not (b.ResumeAt >= 0. && b.ResumeAt < 1.) then
            invalidSetting
                "Backpressure"
                $"WorkflowOptions.Backpressure.ResumeAt must be in [0, 1) (got {b.ResumeAt}); it is the fraction of each limit at which intake resumes."

        if o.MaxConcurrentCalls < 1 then
            invalidSetting
                "MaxConcurrentCalls"
                $"WorkflowOptions.MaxConcurrentCalls must be ≥ 1 (got {o.MaxConcurrentCalls}); it is how many async calls run at once in the workflow (Int32.MaxValue: no cap)."

        if o.MaxConcurrentWrites < 1 then
            invalidSetting
                "MaxConcurrentWrites"
                $"WorkflowOptions.MaxConcurrentWrites must be ≥ 1 (got {o.MaxConcurrentWrites}); it is how many sink writes run at once in the workflow (Int32.MaxValue: no cap)."

        ErrorPolicy.validate "WorkflowOptions.OnFailure" o.OnFailure

        for KeyValue(stage, policy) in o.OnStageFailure do
            if blank stage then
                invalidSetting
                    "OnStageFailure"
                    "WorkflowOptions.OnStageFailure: a stage name must not be empty."

            ErrorPolicy.validate $"WorkflowOptions.OnStageFailure[{stage}]" policy

        if o.SinkRetries < 0 then
            invalidSetting
                "SinkRetries"
                $"WorkflowOptions.SinkRetries must be ≥ 0 (got {o.SinkRetries}); 0 disables them."

        Backoff.validate "WorkflowOptions.SinkRetryBackoff" o.SinkRetryBackoff |> ignore
        positive "StartTimeout" o.StartTimeout "how long the start waits for the cluster to answer"

        if isNull (box o.Log) then
            invalidSetting "Log" "WorkflowOptions.Log must not be null; use ignore to drop the log lines."

        o

    /// The Confluent consumer configuration: KFlow's consumer defaults (consumerDefaults, and the
    /// ConsumeResult fields the runtime reads: topic and timestamp, plus headers when a policy
    /// dead-letters), the pass-through properties (which override them), then the settings the
    /// runtime owns (offsets stored explicitly, committed by librdkafka every CommitInterval).
    let consumerConfig (o: WorkflowOptions) =
        let c = ConsumerConfig()

        for key, value in consumerDefaults do
            c.Set(key, value)

        // Without a dead-letter policy nothing reads a message's headers: Confluent.Kafka then builds
        // no Headers and header list per message (two objects per message; bench (c)).
        c.Set(ResultFields, String.Join(",", neededFields o))

        for key, value in o.Properties do
            c.Set(key, value)

        c.BootstrapServers <- o.BootstrapServers
        c.GroupId <- o.GroupId
        c.ClientId <- o.Name
        c.EnableAutoCommit <- true
        c.EnableAutoOffsetStore <- false
        c.AutoCommitIntervalMs <- int o.CommitInterval.TotalMilliseconds

        c.AutoOffsetReset <-
            match o.AutoOffsetReset with
            | Earliest -> AutoOffsetReset.Earliest
            | Latest -> AutoOffsetReset.Latest

        c
