// The exactly-once crash test's child process: a workflow map → demux by key → aggregate → exactly-once
// PostgreSQL sink appending one row per message to an insert-only table, so a message applied twice
// after a SIGKILL would show as a duplicate row.
module KFlow.Postgres.CrashChild.Program

open System
open KFlow
open KFlow.Kafka
open KFlow.Tests
open KFlow.Postgres

let usage =
    """usage: KFlow.Postgres.CrashChild BOOTSTRAP TOPIC GROUP CONNECTION-STRING TABLE [KEY=VALUE]...

Runs the workflow map → demux by key → aggregate (50 messages or 100 ms) → exactly-once PostgreSQL sink
on TOPIC in GROUP. Each message becomes the row (topic, partition, src_offset, key) of TABLE, which has
no key: a message applied twice would show as two rows. KEY=VALUE pairs are librdkafka consumer
properties. Prints READY once it owns partitions and PARTITIONS n whenever the count changes; SIGINT or
SIGTERM stops it gracefully (exit code 0)."""

/// The row of one message: topic, partition, offset, key.
let rowOf (e: Envelope<byte[]>) : obj[] = [|
    e.Position.TopicPartition.Topic
    e.Position.TopicPartition.Partition
    e.Position.Offset
    e.Key
|]

/// map → demux by key → aggregate (50 or 100 ms) → exactly-once sink.
let pipe (writer: UpsertWriter<obj[]>) =
    CrashChildHost.batchedByKey rowOf
    |> UpsertWriter.sinkExactlyOnce "events" writer

[<EntryPoint>]
let main argv =
    if argv.Length < 5 then
        eprintfn "%s" usage
        2
    else
        let bootstrap, topic, group, connection, table =
            argv[0], argv[1], argv[2], argv[3], argv[4]

        let config =
            UpsertConfig.create
                (PgConnection.ConnectionString connection)
                table
                [ "topic"; "partition"; "src_offset"; "key" ]
                []
                id
            |> UpsertConfig.withExactlyOnce group

        use writer = (UpsertWriter.create config).GetAwaiter().GetResult()

        let options =
            CrashChildHost.options usage "pg-crash-child" bootstrap group topic (Array.skip 5 argv)

        let handle = Workflow.run options (pipe writer)
        CrashChildHost.runUntilSignalled handle
