// The examples of docs/fsharp-guide.md, compiled here (the list of workflows is run on the embedded
// cluster by WorkflowsTests). Each snippet sits between `//[name]` and `//[/name]`; a test checks
// that the page shows exactly them.
module KFlow.Kafka.Tests.FSharpGuideTests

open System
open System.Collections.Concurrent
open System.Text
open System.Text.Json
open System.Threading
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Postgres
open KFlow.Testing

//[example-workflow]
/// One event of example_topic, and one row of my_table.
type Event = {
    Key: string
    Foo: int64
    Bar: string
    Baz: float
}

/// The seed's example_workflow: JSON events from example_topic, the Kafka key attached, split by
/// key, batches of 100 upserted into my_table by key.
let exampleWorkflow (bootstrapServers: string) (connectionString: string) = task {
    let json = JsonSerializerOptions(JsonSerializerDefaults.Web)

    let table =
        UpsertConfig.create
            (PgConnection.ConnectionString connectionString)
            "my_table"
            [ "key"; "foo"; "bar"; "baz" ]
            [ "key" ]
            (fun (e: Event) -> [| e.Key :> obj; e.Foo; e.Bar; e.Baz |])

    let! writer = UpsertWriter.create table // checks my_table now

    let pipe =
        Pipe.source<byte[]>
        |> Pipe.mapEnvelope (fun m -> {
            nonNull (JsonSerializer.Deserialize<Event>(m.Value, json)) with
                Key = m.Key
        })
        |> Pipe.demuxByKey (fun perKey -> perKey |> Pipe.aggregate (Buffer.count 100))
        |> Pipe.sink "my_table" (UpsertWriter.write writer)

    let options =
        WorkflowOptions.create "example_workflow" bootstrapServers "example_consumer_group_id" [
            "example_topic"
        ]

    return Workflows.define options pipe
}
//[/example-workflow]

//[workflow-value]
/// Counts the messages of `topic` per key into `counts`: a workflow as a value, defined once and
/// started (or tested) wherever it is needed.
let countingWorkflow (bootstrapServers: string) (counts: ConcurrentDictionary<string, int>) (topic: string) =
    let pipe =
        Pipe.source<byte[]>
        |> Pipe.mapEnvelope (fun m -> m.Key)
        |> Pipe.sink "count" (fun key ->
            counts.AddOrUpdate(key, 1, (fun _ n -> n + 1)) |> ignore
            Task.CompletedTask)

    let options = {
        WorkflowOptions.create $"count-{topic}" bootstrapServers $"count-{topic}" [ topic ] with
            CommitInterval = TimeSpan.FromSeconds 1.
            OnStageFailure = Map [ "count", DeadLetter $"{topic}-dlq" ]
    }

    Workflows.define options pipe
//[/workflow-value]

//[workflow-list]
/// KFlow's kflow_config: the workflows this service runs, as a plain list.
let workflows (bootstrapServers: string) (counts: ConcurrentDictionary<string, int>) = [
    countingWorkflow bootstrapServers counts "orders"
    countingWorkflow bootstrapServers counts "payments"
]

/// Runs the workflows until `stopping` is cancelled or one of them halts, then stops all of
/// them gracefully (flush, drain, commit).
let runUntil (stopping: CancellationToken) (list: WorkflowDefinition list) = task {
    let running = Workflows.runAll list
    let cancelled = Task.Delay(Timeout.Infinite, stopping)
    let halted = Task.WhenAny [| for h in running.Handles -> h.Completion |]
    let! _ = Task.WhenAny(cancelled, halted)
    do! running.StopAsync()
    return running
}
//[/workflow-list]

//[run-one]
/// One workflow, run and stopped by hand.
let runOne (definition: WorkflowDefinition) = task {
    let handle = Workflows.start definition // = Workflow.run definition.Options pipe
    do! Task.Delay(TimeSpan.FromSeconds 10.)
    printfn "%A" handle.Stats // consumed, completed, in flight, lag per partition, ...
    do! handle.StopAsync()
}
//[/run-one]

let tests =
    testList "FSharpGuide" [
        testCase "docs/fsharp-guide.md shows exactly the marked regions of this file"
        <| fun () ->
            DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/fsharp-guide.md"
                "tests/KFlow.Kafka.Tests/FSharpGuideTests.fs"
        testCase "the example workflow's definition reads like the seed's pipe spec"
        <| fun () ->
            let definition = countingWorkflow "localhost:9092" (ConcurrentDictionary()) "orders"
            Expect.equal definition.Name "count-orders" "named after the options"
            Expect.stringContains definition.Outline "sink count" "the outline lists the sink"
    ]
