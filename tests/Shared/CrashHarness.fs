// The crash tests' harness, shared by the Kafka and PostgreSQL crash tests: a child workflow process
// to kill with SIGKILL and restart, a background producer, and the group offsets to compare with.
// Linked into each test project that kills a child (see tests/support/CrashChildHost.fs).
module KFlow.Tests.CrashHarness

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Confluent.Kafka
open Expecto
open KFlow.Testing

/// The log lines of one test, the runtime's and the child's (printed when the test fails).
type Log() =
    let lines = ConcurrentQueue<string>()
    let clock = Stopwatch.StartNew()

    /// Adds a line, stamped with the milliseconds since the log was created.
    member _.Add(line: string) =
        lines.Enqueue $"%6d{clock.ElapsedMilliseconds} {line}"

    /// Every line so far.
    member _.Lines = List.ofSeq lines

    /// How many lines contain `part`.
    member _.Count(part: string) =
        lines |> Seq.filter (fun l -> l.Contains part) |> Seq.length

    /// The last lines, for failure messages.
    member _.Tail =
        let all = Array.ofSeq lines
        all |> Array.skip (max 0 (all.Length - 40)) |> String.concat "\n"

/// The end (high watermark) offset of every partition of a topic.
let endOffsets (cluster: EmbeddedKafkaCluster) (topic: string) (partitions: int) =
    use consumer =
        ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig "watermarks").Build()

    [
        for p in 0 .. partitions - 1 ->
            p,
            (consumer.QueryWatermarkOffsets(TopicPartition(topic, Partition p), TimeSpan.FromSeconds 10.))
                .High.Value
    ]

/// The offsets a group committed for every partition of a topic (-1001 when none).
let committed (cluster: EmbeddedKafkaCluster) (group: string) (topic: string) (partitions: int) =
    use consumer = ConsumerBuilder<Ignore, Ignore>(cluster.ConsumerConfig group).Build()

    consumer.Committed(
        [ for p in 0 .. partitions - 1 -> TopicPartition(topic, Partition p) ],
        TimeSpan.FromSeconds 10.
    )
    |> Seq.map (fun tpo -> tpo.Partition.Value, tpo.Offset.Value)
    |> Seq.sortBy fst
    |> List.ofSeq

/// Waits until `condition` holds, checking every 20 ms; fails the test (with the log's tail) after `within`.
let waitUntil (log: Log) (within: TimeSpan) (what: string) (condition: unit -> bool) =
    let clock = Stopwatch.StartNew()

    while not (condition ()) do
        if clock.Elapsed > within then
            failtestf "Timed out after %O waiting until %s.\nLog:\n%s" within what log.Tail

        Thread.Sleep 20

/// The fast consumer settings (session timeout 2 s, …) as a child's KEY=VALUE arguments;
/// auto.offset.reset is the runtime's own option (earliest by default).
let childProperties =
    FastClientSettings.consumer
    |> Seq.filter (fun kv -> kv.Key <> "auto.offset.reset")
    |> Seq.map (fun kv -> $"{kv.Key}={kv.Value}")
    |> List.ofSeq

/// A running child workflow (`dotnet dll args…`, a program built on CrashChildHost): its READY and
/// PARTITIONS lines; its stderr (the runtime's log) and any other stdout line go to `log`.
type Child(dll: string, args: string list, log: Log) =
    let ready = new ManualResetEventSlim()
    let started = Stopwatch.StartNew()
    let mutable readyAfter = TimeSpan.Zero
    let mutable partitions = 0

    let proc = BuiltProgram.start dll args

    do
        proc.OutputDataReceived.Add(fun e ->
            match e.Data with
            | null -> ()
            | "READY" ->
                readyAfter <- started.Elapsed
                ready.Set()
            | line when line.StartsWith "PARTITIONS " -> Volatile.Write(&partitions, int (line.Substring 11))
            | line -> log.Add $"child stdout: {line}")

        proc.ErrorDataReceived.Add(fun e ->
            match e.Data with
            | null -> ()
            | line -> log.Add $"child: {line}")

        proc.BeginOutputReadLine()
        proc.BeginErrorReadLine()

    /// The partitions the child owns, as it last printed.
    member _.Partitions = Volatile.Read &partitions

    /// Waits until the child owns partitions (fails the test after `within`); returns how long
    /// after its start that was (process start, group join and the rebalance included).
    member _.WaitReady(within: TimeSpan) =
        if not (ready.Wait within) then
            failtestf "The child printed no READY within %O.\nLog:\n%s" within log.Tail

        readyAfter

    /// SIGKILL, then waits for the process to be gone.
    member _.Kill() =
        proc.Kill()
        proc.WaitForExit()

    /// SIGTERM (a graceful stop), then waits for the exit code.
    member _.Stop() =
        use kill = Process.Start("kill", [ "-TERM"; string proc.Id ])
        kill.WaitForExit()

        if not (proc.WaitForExit(30_000)) then
            failtestf "The child did not stop within 30 s.\nLog:\n%s" log.Tail

        proc.WaitForExit()
        proc.ExitCode

    interface IDisposable with
        member _.Dispose() =
            if not proc.HasExited then
                proc.Kill()
                proc.WaitForExit()

            proc.Dispose()
            ready.Dispose()

/// A producer running in the background: `perTick` messages every 20 ms until stopped, message i
/// with key "k{i % keys}" and value "k{i % keys}:{i / keys}"; remembers every delivered message's
/// (partition, offset).
type KeyedStream(cluster: EmbeddedKafkaCluster, topic: string, keys: int, perTick: int) =
    let producer = ProducerBuilder<string, string>(cluster.ProducerConfig()).Build()
    let delivered = ConcurrentBag<int * int64>()
    let mutable failed = 0
    let stop = new CancellationTokenSource()

    let run =
        Task.Run(fun () ->
            let mutable i = 0

            while not stop.IsCancellationRequested do
                for _ in 1..perTick do
                    producer.Produce(
                        topic,
                        Message<_, _>(Key = $"k{i % keys}", Value = $"k{i % keys}:{i / keys}"),
                        fun (report: DeliveryReport<string, string>) ->
                            if report.Error.IsError then
                                Interlocked.Increment &failed |> ignore
                            else
                                delivered.Add(report.Partition.Value, report.Offset.Value)
                    )

                    i <- i + 1

                Thread.Sleep 20)

    /// Stops producing, waits for every delivery and returns the delivered positions.
    member _.Finish() =
        stop.Cancel()
        run.Wait()
        producer.Flush(TimeSpan.FromSeconds 60.) |> ignore
        Expect.equal failed 0 "every message is delivered"
        Set.ofSeq delivered

    interface IDisposable with
        member _.Dispose() =
            stop.Cancel()
            run.Wait()
            producer.Dispose()
            stop.Dispose()
