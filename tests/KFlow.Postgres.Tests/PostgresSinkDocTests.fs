// The examples of docs/postgres-sink.md, compiled here between //[name] markers; a test checks that the
// page shows them exactly, and the examples run against the throwaway server.
module KFlow.Postgres.Tests.PostgresSinkDocTests

open Expecto
open KFlow.Testing
open KFlow.Postgres.Tests.TestDatabase

module UpsertExample =
    //[upsert-example]
    open KFlow.Postgres

    type Order = {
        Key: string
        Foo: int
        Bar: decimal option
        Baz: System.DateTime
    }

    let config =
        UpsertConfig.create
            (PgConnection.ConnectionString "Host=db;Database=shop;Username=app;Password=...")
            "public.my_table" // table or schema.table, exact names
            [ "key"; "foo"; "bar"; "baz" ] // the columns written
            [ "key" ] // covered by a primary key or unique constraint
            (fun o -> [| box o.Key; box o.Foo; box o.Bar; box o.Baz |]) // values in field order

    let upsertOne () = task {
        use! writer = UpsertWriter.create config // checks the table now, not at the first batch
        let sink: Order list -> System.Threading.Tasks.Task = UpsertWriter.write writer

        do!
            sink [
                {
                    Key = "a"
                    Foo = 1
                    Bar = None
                    Baz = System.DateTime.UtcNow
                }
            ]
    }
//[/upsert-example]

module Mappers =
    open KFlow.Postgres

    let configs connection fields keys =
        //[mappers]
        let byName = UpsertConfig.ofDictionaries connection "my_table" fields keys // IDictionary<string, obj>
        let byJson = UpsertConfig.ofJson connection "my_table" fields keys // System.Text.Json.JsonElement
        //[/mappers]
        byName, byJson

module PipelinedExample =
    open KFlow
    open KFlow.Kafka
    open KFlow.Postgres

    let workflow (bootstrap: string) (config: UpsertConfig<obj[]>) (parse: byte[] -> obj[]) = task {
        //[pipelined-sink]
        let! writer = UpsertWriter.create (config |> UpsertConfig.withPipelining 32) // 32 is the default

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.map parse
            |> Pipe.aggregate (Buffer.count 1_000)
            |> UpsertWriter.sink "orders" writer // up to 32 batches in flight, in order per key
        //[/pipelined-sink]
        return Workflow.run (WorkflowOptions.create "orders" bootstrap "orders-service" [ "orders" ]) pipe
    }

module ExactlyOnceExample =
    //[exactly-once-example]
    open KFlow
    open KFlow.Kafka
    open KFlow.Postgres

    /// Appends one row per message to events (topic, partition, src_offset, body): no key, no upsert.
    let appendEvents (bootstrap: string) (connection: string) = task {
        let config =
            UpsertConfig.create
                (PgConnection.ConnectionString connection)
                "events"
                [ "topic"; "partition"; "src_offset"; "body" ]
                [] // no keys: rows are appended, which only exactly-once mode allows
                id
            |> UpsertConfig.withExactlyOnce "events-service" // the workflow's group

        let! writer = UpsertWriter.create config // creates kflow_applied_offsets if it is missing

        let row (e: Envelope<byte[]>) : obj[] = [|
            e.Position.TopicPartition.Topic
            e.Position.TopicPartition.Partition
            e.Position.Offset
            System.Text.Encoding.UTF8.GetString e.Value
        |]

        let pipe =
            Pipe.source<byte[]>
            |> Pipe.mapEnvelope row
            |> Pipe.demuxByKey (fun sub -> sub |> Pipe.aggregate (Buffer.count 100))
            |> UpsertWriter.sinkExactlyOnce "events" writer

        return Workflow.run (WorkflowOptions.create "events" bootstrap "events-service" [ "orders" ]) pipe
    }
//[/exactly-once-example]

let tests =
    testSequenced
    <| testList "docs" [
        test "docs/postgres-sink.md shows the examples exactly as this file compiles them" {
            DocSnippets.expectPageShowsRegions
                "fsharp"
                "docs/postgres-sink.md"
                "tests/KFlow.Postgres.Tests/PostgresSinkDocTests.fs"
        }

        test "the upsert example writes its order into my_table" {
            execute
                "CREATE TABLE IF NOT EXISTS public.my_table (key text PRIMARY KEY, foo int, bar numeric, baz timestamp)"

            let run = {
                UpsertExample.config with
                    Connection = KFlow.Postgres.PgConnection.ConnectionString(connectionString ())
            }

            (task {
                use! writer = KFlow.Postgres.UpsertWriter.create run

                let order: UpsertExample.Order = {
                    Key = "a"
                    Foo = 1
                    Bar = None
                    Baz = System.DateTime(2024, 1, 1)
                }

                do! KFlow.Postgres.UpsertWriter.write writer [ order ]
            })
                .GetAwaiter()
                .GetResult()

            Expect.equal (scalar<int> "SELECT foo FROM public.my_table WHERE key = 'a'") 1 "the row"
        }
    ]
