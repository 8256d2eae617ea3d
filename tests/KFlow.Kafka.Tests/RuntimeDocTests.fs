// The examples of docs/runtime.md, compiled here (and the first one run on the embedded cluster).
// Each snippet sits between `//[name]` and `//[/name]`; a test checks the page shows exactly them.
module KFlow.Kafka.Tests.RuntimeDocTests

open System
open System.Collections.Concurrent
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Testing

/// A console program running one workflow until SIGINT/SIGTERM, then stopping it gracefully: the
/// shape a crash test (kill -9 of a child process) can start and kill.
//[console]
let consoleMain (argv: string[]) =
    let bootstrapServers, topic = argv[0], argv[1]

    let pipe =
        Pipe.source<byte[]>
        |> Pipe.map Encoding.UTF8.GetString
        |> Pipe.sink "stdout" (fun (line: string) ->
            Console.Out.WriteLine line
            Task.CompletedTask)

    let options = WorkflowOptions.create "echo" bootstrapServers "echo" [ topic ]
    let handle = Workflow.run options pipe
    use stopping = new ManualResetEventSlim()

    let stop =
        Action<PosixSignalContext>(fun context ->
            context.Cancel <- true
            stopping.Set())

    use _sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, stop)
    use _sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, stop)

    WaitHandle.WaitAny [| stopping.WaitHandle; (handle.Completion :> IAsyncResult).AsyncWaitHandle |]
    |> ignore

    handle.StopAsync().Wait()
    if handle.Completion.IsFaulted then 1 else 0
//[/console]

let tests =
    testSequenced
    <| testList "RuntimeDoc" [
        test "the page's run example consumes, batches, sinks and commits" {
            use cluster = EmbeddedKafka.start 1
            cluster.CreateTopic("orders", 2)
            Kafka.produceKeyed cluster "orders" 3 30
            let bootstrapServers = cluster.BootstrapServers
            let written = ConcurrentQueue<string>()

            let writeBatch (batch: string list) =
                Task.Run(fun () ->
                    for v in batch do
                        written.Enqueue v)

            let keyOf (value: string) = value.Substring(0, value.IndexOf ':')
            //[run]
            let options = {
                WorkflowOptions.create "orders-to-db" bootstrapServers "orders-to-db" [ "orders" ] with
                    CommitInterval = TimeSpan.FromSeconds 2.
                    Backpressure = {
                        WorkflowOptions.backpressure with
                            MaxInFlightMessages = 10_000
                    }
            }

            let pipe =
                Pipe.source<byte[]>
                |> Pipe.map Encoding.UTF8.GetString
                |> Pipe.demux keyOf (fun sub -> sub |> Pipe.aggregate (Buffer.count 100))
                |> Pipe.sink "db" writeBatch

            let handle = Workflow.run options pipe
            // ... until shutdown; then flush, drain, commit and leave the group:
            //[/run]
            let log = Kafka.Log()

            Kafka.waitUntil log (TimeSpan.FromSeconds 30.) "30 messages are consumed" (fun () ->
                handle.Stats.Consumed >= 30L)
            //[stop]
            handle.StopAsync().Wait()
            //[/stop]
            Expect.equal written.Count 30 "the stop flushed the batches"

            // A partition that received no message has nothing to commit.
            let ends = Kafka.endOffsets cluster "orders" 2 |> List.filter (fun (_, o) -> o > 0L)

            let committed =
                Kafka.committed cluster "orders-to-db" "orders" 2
                |> List.filter (fun (p, _) -> ends |> List.exists (fun (q, _) -> p = q))

            Expect.equal committed ends "every partition with messages is committed to its end"
        }

        testCase "docs/runtime.md shows exactly the marked regions of this file"
        <| fun () ->
            DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/runtime.md"
                "tests/KFlow.Kafka.Tests/RuntimeDocTests.fs"
    ]
