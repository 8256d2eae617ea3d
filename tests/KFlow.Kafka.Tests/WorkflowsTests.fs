// Tests for src/KFlow.Kafka/Workflows.fs: a list of workflow definitions (KFlow's kflow_config) run
// together on the embedded cluster and stopped together; duplicate names refused up front.
module KFlow.Kafka.Tests.WorkflowsTests

open System
open System.Collections.Concurrent
open System.Threading
open Expecto
open KFlow.Kafka
open KFlow.Kafka.Tests.Kafka
open KFlow.Testing

let tests =
    testSequenced
    <| testList "Workflows" [
        testCase "runAll starts every workflow of the list and stopping them commits each one's offsets"
        <| fun () ->
            use cluster = EmbeddedKafka.start 1
            let log = Log()

            for topic in [ "orders"; "payments" ] do
                cluster.CreateTopic(topic, 2)

            produceKeyed cluster "orders" 4 300
            produceKeyed cluster "payments" 3 200
            let counts = ConcurrentDictionary<string, int>()

            // Two counting workflows on the cluster's fast client settings, run by the guide's runUntil.
            let counting (topic: string) =
                let group = $"count-{topic}"

                KFlow.Pipe.source<byte[]>
                |> KFlow.Pipe.mapEnvelope (fun m -> m.Key)
                |> KFlow.Pipe.sink "count" (fun key ->
                    counts.AddOrUpdate(key, 1, (fun _ n -> n + 1)) |> ignore
                    Threading.Tasks.Task.CompletedTask)
                |> Workflows.define (options cluster log group [ topic ])

            use stopping = new CancellationTokenSource()

            let run =
                FSharpGuideTests.runUntil stopping.Token [ counting "orders"; counting "payments" ]

            waitUntil log (seconds 60.) "both topics are counted" (fun () -> Seq.sum counts.Values = 500)

            stopping.Cancel()
            let running = run.Result
            Expect.equal running.Completion.Status Threading.Tasks.TaskStatus.RanToCompletion "a clean stop"

            Expect.equal
                (running.Handles |> List.map _.Name)
                [ "count-orders"; "count-payments" ]
                "in list order"

            for topic, group in [ "orders", "count-orders"; "payments", "count-payments" ] do
                Expect.equal
                    // A partition without any message has no commit (-1001): its end is 0.
                    (committed cluster group topic 2 |> List.map (fun (p, o) -> p, max 0L o))
                    (endOffsets cluster topic 2)
                    $"{group} committed the end of {topic}"

            Expect.equal (counts["k0"]) (75 + 67) "k0 of both topics, each once"
        testCase "runAll refuses two workflows of the same name before starting any"
        <| fun () ->
            let counts = ConcurrentDictionary<string, int>()
            let one = FSharpGuideTests.countingWorkflow "localhost:1" counts "orders"

            Expect.throwsC (fun () -> Workflows.runAll [ one; one ] |> ignore) (fun e ->
                Expect.isTrue (e :? ArgumentException) "ArgumentException"

                Expect.stringContains
                    e.Message
                    "two workflows are named 'count-orders'"
                    "names the duplicate")
    ]
