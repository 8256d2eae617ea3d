// The crash tests' child process: a workflow map → demux by key → aggregate → file sink whose sink
// appends, flushes and fsyncs each message's position before its write completes, so a SIGKILL
// can never lose a line that a committed offset relies on.
module KFlow.Kafka.CrashChild.Program

open System
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Threading
open System.Threading.Tasks
open KFlow
open KFlow.Kafka

let usage =
    """usage: KFlow.Kafka.CrashChild BOOTSTRAP TOPIC GROUP SINK-FILE [KEY=VALUE]...

Runs the workflow map → demux by key → aggregate (50 messages or 100 ms) → file sink on TOPIC in
GROUP. Each sunk message appends the line "topic partition offset key" to SINK-FILE, flushed and
fsynced before the write completes. KEY=VALUE pairs are librdkafka consumer properties. Prints
READY once it owns partitions and PARTITIONS n whenever the count changes; SIGINT or SIGTERM stops
it gracefully (exit code 0)."""

/// The file sink: one append-only stream shared by every partition's writes.
type LineFile(path: string) =
    let stream =
        new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.ReadWrite ||| FileShare.Delete)

    /// Appends the lines, flushes them to the disk (fsync) and only then returns.
    member _.Append(lines: string list) =
        let bytes =
            Encoding.UTF8.GetBytes(lines |> List.map (fun l -> l + "\n") |> String.concat "")

        lock stream (fun () ->
            stream.Write(bytes, 0, bytes.Length)
            stream.Flush true)

    interface IDisposable with
        member _.Dispose() = stream.Dispose()

/// The line of one message: topic, partition, offset, key.
let lineOf (e: Envelope<byte[]>) =
    $"{e.Position.TopicPartition.Topic} {e.Position.TopicPartition.Partition} {e.Position.Offset} {e.Key}"

/// map → demux by key → aggregate (50 or 100 ms) → file sink.
let pipe (file: LineFile) =
    let batches =
        Buffer.create {
            Buffer.options with
                MaxCount = Some 50
                MaxAge = Some(TimeSpan.FromMilliseconds 100.)
        }

    Pipe.source<byte[]>
    |> Pipe.mapEnvelope lineOf
    |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate batches)
    |> Pipe.sink "file" (fun (batch: string list) ->
        file.Append batch
        Task.CompletedTask)

/// Splits "key=value".
let property (text: string) =
    match text.IndexOf '=' with
    | i when i > 0 -> text.Substring(0, i), text.Substring(i + 1)
    | _ -> failwith $"'{text}' is not KEY=VALUE.\n{usage}"

[<EntryPoint>]
let main argv =
    if argv.Length < 4 then
        eprintfn "%s" usage
        2
    else
        let bootstrap, topic, group, sinkFile = argv[0], argv[1], argv[2], argv[3]
        use file = new LineFile(sinkFile)

        let options = {
            WorkflowOptions.create "crash-child" bootstrap group [ topic ] with
                Properties = argv |> Array.skip 4 |> Array.map property |> List.ofArray
                CommitInterval = TimeSpan.FromMilliseconds 200.
                TickInterval = TimeSpan.FromMilliseconds 50.
                Log = fun line -> eprintfn "%s" line
        }

        let handle = Workflow.run options (pipe file)
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
