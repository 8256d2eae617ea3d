// The F# example of README.md, compiled here; a test checks the README shows exactly this region.
// Also compiled into KFlow.Postgres.Tests, whose SeedWorkflowTests run it end to end.
module KFlow.Kafka.Tests.ReadmeTests

open System.IO
open System.Text.Json
open System.Threading.Tasks
open Expecto
open KFlow
open KFlow.Kafka
open KFlow.Testing

/// One event of example_topic and one row of my_table.
type Event = {
    Key: string
    Foo: int64
    Bar: string
    Baz: float
}

/// The seed's example workflow in F#; `upsert` writes a batch to my_table (e.g. UpsertWriter.write).
let exampleWorkflow (bootstrapServers: string) (upsert: Event list -> Task) =
    //[readme-fsharp]
    let json = JsonSerializerOptions(JsonSerializerDefaults.Web)

    let pipe =
        Pipe.source<byte[]>
        |> Pipe.mapEnvelope (fun m -> {
            nonNull (JsonSerializer.Deserialize<Event>(m.Value, json)) with
                Key = m.Key
        })
        |> Pipe.demuxByKey (fun perKey -> perKey |> Pipe.aggregate (Buffer.count 100))
        |> Pipe.sink "my_table" upsert

    let options =
        WorkflowOptions.create "example" bootstrapServers "example_consumer_group_id" [ "example_topic" ]

    Workflow.run options pipe // a handle: StopAsync() flushes, drains and commits
//[/readme-fsharp]

let tests =
    testList "README" [
        testCase "shows the F# example exactly as compiled here"
        <| fun () ->
            DocSnippets.expectPageShowsRegions "fsharp" "README.md" "tests/KFlow.Kafka.Tests/ReadmeTests.fs"
    ]
