// The crash tests' child process: a workflow map → demux by key → aggregate → file sink whose sink
// appends, flushes and fsyncs each message's position before its write completes, so a SIGKILL
// can never lose a line that a committed offset relies on.
module KFlow.Kafka.CrashChild.Program

open System
open System.IO
open System.Text
open System.Threading.Tasks
open KFlow
open KFlow.Kafka
open KFlow.Tests

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
    CrashChildHost.batchedByKey lineOf
    |> Pipe.sink "file" (fun (batch: string list) ->
        file.Append batch
        Task.CompletedTask)

[<EntryPoint>]
let main argv =
    if argv.Length < 4 then
        eprintfn "%s" usage
        2
    else
        let bootstrap, topic, group, sinkFile = argv[0], argv[1], argv[2], argv[3]
        use file = new LineFile(sinkFile)

        let options =
            CrashChildHost.options usage "crash-child" bootstrap group topic (Array.skip 4 argv)

        let handle = Workflow.run options (pipe file)
        CrashChildHost.runUntilSignalled handle
