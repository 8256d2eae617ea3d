// The shared main loop of the crash tests' child processes (linked into each project under
// tests/support): the pipe up to the sink, workflow options from the command line, READY/PARTITIONS
// lines, SIGINT/SIGTERM.
module KFlow.Tests.CrashChildHost

open System
open System.Runtime.InteropServices
open System.Threading
open KFlow
open KFlow.Kafka

/// The children's pipe up to the sink: map each message with `item`, demux by key, aggregate each
/// key's items into batches of 50 or of what arrived within 100 ms.
let batchedByKey (item: Envelope<byte[]> -> 'a) =
    let batches =
        Buffer.create {
            Buffer.options with
                MaxCount = Some 50
                MaxAge = Some(TimeSpan.FromMilliseconds 100.)
        }

    Pipe.source<byte[]>
    |> Pipe.mapEnvelope item
    |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate batches)

/// Splits "key=value"; fails with `usage` otherwise.
let property (usage: string) (text: string) =
    match text.IndexOf '=' with
    | i when i > 0 -> text.Substring(0, i), text.Substring(i + 1)
    | _ -> failwith $"'{text}' is not KEY=VALUE.\n{usage}"

/// The child's workflow options: `name` reading `topic` in `group`, the librdkafka consumer
/// properties of the KEY=VALUE `pairs`, commits every 200 ms, ticks every 50 ms, logs to stderr.
let options
    (usage: string)
    (name: string)
    (bootstrap: string)
    (group: string)
    (topic: string)
    (pairs: string[])
    =
    {
        WorkflowOptions.create name bootstrap group [ topic ] with
            Properties = pairs |> Array.map (property usage) |> List.ofArray
            CommitInterval = TimeSpan.FromMilliseconds 200.
            TickInterval = TimeSpan.FromMilliseconds 50.
            Log = fun line -> eprintfn "%s" line
    }

/// Runs a started workflow until SIGINT or SIGTERM (a graceful stop) or until it ends; prints READY
/// once it owns partitions and PARTITIONS n whenever the count changes. Returns the exit code:
/// 0 after a clean stop, 1 if the workflow faulted.
let runUntilSignalled (handle: WorkflowHandle) =
    use stopping = new ManualResetEventSlim()

    let stop =
        Action<PosixSignalContext>(fun context ->
            context.Cancel <- true
            stopping.Set())

    use _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, stop)
    use _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, stop)
    let completion = (handle.Completion :> IAsyncResult).AsyncWaitHandle
    let mutable partitions = 0

    while not stopping.IsSet && not handle.Completion.IsCompleted do
        let now = handle.Stats.AssignedPartitions

        if now <> partitions then
            if partitions = 0 && now > 0 then
                Console.Out.WriteLine "READY"

            Console.Out.WriteLine $"PARTITIONS {now}"
            Console.Out.Flush()
            partitions <- now

        WaitHandle.WaitAny([| stopping.WaitHandle; completion |], 20) |> ignore

    handle.StopAsync().Wait()
    if handle.Completion.IsFaulted then 1 else 0
