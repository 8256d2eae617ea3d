// The C# face of UpsertWriter: a connection string, IReadOnlyList columns and a Func row mapper in;
// batches as IReadOnlyList, so the C# facade never builds an F# list or function.
namespace KFlow.Postgres

open System
open System.Collections.Generic
open System.Runtime.InteropServices
open System.Threading.Tasks
open KFlow

/// Creating and using upsert writers from C#; the F# API is `UpsertConfig` + `UpsertWriter`.
[<AbstractClass; Sealed>]
type UpsertWriterCore =
    /// <summary>Creates a writer (see UpsertWriter.create): checks the table, its columns and its unique
    /// key now. <paramref name="row"/> returns a record's values in the order of
    /// <paramref name="fields"/> (null for NULL). Default retries: 10 attempts, 100 ms to 5 s.
    /// <paramref name="pipelining"/>: batches of one substream written at once by <see cref="Sink"/>
    /// (UpsertConfig.Pipelining); default 0: 32. <paramref name="statements"/>: statements of the writer
    /// at once, the batches waiting meanwhile joined (UpsertConfig.Statements); default 0: 2.
    /// <paramref name="statementRows"/>: the most rows one statement joins from waiting batches
    /// (UpsertConfig.StatementRows); default 0: 16,384.</summary>
    static member CreateAsync
        (
            connectionString: string,
            table: string,
            fields: IReadOnlyList<string>,
            keys: IReadOnlyList<string>,
            row: Func<'a, obj[]>,
            [<Optional; DefaultParameterValue(0)>] pipelining: int,
            [<Optional; DefaultParameterValue(0)>] statements: int,
            [<Optional; DefaultParameterValue(0)>] statementRows: int
        ) : Task<UpsertWriter<'a>> =
        UpsertWriter.create (
            UpsertWriterCore.Config(
                connectionString,
                table,
                fields,
                keys,
                row,
                pipelining,
                statements,
                statementRows
            )
        )

    /// <summary>Creates a writer in exactly-once mode (see UpsertConfig.withExactlyOnce): each batch
    /// records its source offsets for <paramref name="groupId"/> in the offsets table in the same
    /// statement as its rows. <paramref name="keys"/> may be empty: rows are then appended. Checks the
    /// table now and creates the offsets table if it is missing. Write with
    /// <see cref="SinkExactlyOnce"/>.</summary>
    /// <param name="connectionString">The Npgsql connection string (a pooled data source is made).</param>
    /// <param name="table">The table, table or schema.table; names are exact.</param>
    /// <param name="fields">The columns written, in the order of the row mapper's values.</param>
    /// <param name="keys">The key columns (covered by a unique constraint), or none to append.</param>
    /// <param name="row">A record's values in field order (null for NULL).</param>
    /// <param name="groupId">The workflow's consumer group; the runtime refuses another.</param>
    /// <param name="offsetsTable">The offsets table (table or schema.table). Default null:
    /// kflow_applied_offsets.</param>
    /// <param name="pipelining">Batches of one substream written at once (UpsertConfig.Pipelining).
    /// Default 0: 32.</param>
    /// <param name="statements">Statements of the writer at once, the batches waiting meanwhile joined
    /// (UpsertConfig.Statements). Default 0: 2.</param>
    /// <param name="statementRows">The most rows one statement joins from waiting batches
    /// (UpsertConfig.StatementRows). Default 0: 16,384.</param>
    static member CreateExactlyOnceAsync
        (
            connectionString: string,
            table: string,
            fields: IReadOnlyList<string>,
            keys: IReadOnlyList<string>,
            row: Func<'a, obj[]>,
            groupId: string,
            [<Optional; DefaultParameterValue(null: string)>] offsetsTable: string,
            [<Optional; DefaultParameterValue(0)>] pipelining: int,
            [<Optional; DefaultParameterValue(0)>] statements: int,
            [<Optional; DefaultParameterValue(0)>] statementRows: int
        ) : Task<UpsertWriter<'a>> =
        let exactlyOnce = {
            ExactlyOnceOptions.create groupId with
                OffsetsTable =
                    if isNull offsetsTable then
                        ExactlyOnceOptions.DefaultOffsetsTable
                    else
                        offsetsTable
        }

        UpsertWriter.create {
            UpsertWriterCore.Config(
                connectionString,
                table,
                fields,
                keys,
                row,
                pipelining,
                statements,
                statementRows
            ) with
                ExactlyOnce = Some exactlyOnce
        }

    static member private Config
        (
            connectionString: string,
            table: string,
            fields: IReadOnlyList<string>,
            keys: IReadOnlyList<string>,
            row: Func<'a, obj[]>,
            pipelining: int,
            statements: int,
            statementRows: int
        ) : UpsertConfig<'a> =
        if isNull row then
            raise (ArgumentNullException("row", "Give the row mapper: a record's values in field order."))

        UpsertConfig.create
            (PgConnection.ConnectionString connectionString)
            table
            (if isNull fields then [] else List.ofSeq fields)
            (if isNull keys then [] else List.ofSeq keys)
            row.Invoke
        |> UpsertConfig.withPipelining (
            if pipelining = 0 then
                UpsertConfig.DefaultPipelining
            else
                pipelining
        )
        |> UpsertConfig.withGroupCommit
            (if statements = 0 then
                 UpsertConfig.DefaultStatements
             else
                 statements)
            (if statementRows = 0 then
                 UpsertConfig.DefaultStatementRows
             else
                 statementRows)

    /// The writer's pipelining for batches that come as IReadOnlyList: each becomes one F# list, made
    /// once (so a retry of the same batch finds its reservation), and the function making it.
    static member private ListPipelining(writer: UpsertWriter<'a>) =
        let lists =
            System.Runtime.CompilerServices.ConditionalWeakTable<IReadOnlyList<'a>, 'a list>()

        let listOf (batch: IReadOnlyList<'a>) =
            lists.GetValue(batch, (fun b -> List.ofSeq b))

        let pipelining = writer.Pipelining

        let adapted =
            if pipelining.InFlight <= 1 then
                pipelining
            else
                {
                    pipelining with
                        Reserve = fun batch -> pipelining.Reserve(box (listOf (unbox batch)))
                        Release = fun batch -> pipelining.Release(box (listOf (unbox batch)))
                }

        listOf, adapted

    /// A sink write of IReadOnlyList batches: `write` on the batch's F# list (made once, as
    /// ListPipelining's), then `written` (if any) with its size once it is committed.
    static member private Reporting
        (write: 'a list -> Task, listOf: IReadOnlyList<'a> -> 'a list, written: Action<int>)
        : IReadOnlyList<'a> -> Task =
        fun batch -> task {
            do! write (listOf batch)

            if not (isNull written) then
                written.Invoke batch.Count
        }

    /// Upserts one batch atomically; the Task succeeds once it is committed.
    static member WriteAsync(writer: UpsertWriter<'a>, batch: IReadOnlyList<'a>) : Task =
        writer.Write(List.ofSeq batch)

    /// <summary>Ends a pipe of batches with <paramref name="writer"/> as a sink named
    /// <paramref name="name"/> (see UpsertWriter.sink): up to the writer's pipelining (default 32) batches
    /// of one substream are written at once, the writer keeping them in order per key.</summary>
    /// <param name="pipe">The pipe, ending in batches (e.g. after PipeCore.Aggregate).</param>
    /// <param name="name">The sink's name (logs, failures, stage policies).</param>
    /// <param name="writer">The writer (from <see cref="CreateAsync"/>).</param>
    /// <param name="written">Called with the batch's size after each batch is committed (on the
    /// writing thread). Default null: none.</param>
    static member Sink
        (
            pipe: Pipe<'i, IReadOnlyList<'a>>,
            name: string,
            writer: UpsertWriter<'a>,
            [<Optional; DefaultParameterValue(null: Action<int>)>] written: Action<int>
        ) : Pipe<'i, Sunk> =
        let listOf, adapted = UpsertWriterCore.ListPipelining writer

        pipe
        |> Pipe.sinkWith adapted name (UpsertWriterCore.Reporting(writer.Write, listOf, written))

    /// <summary>Ends a pipe of batches with <paramref name="writer"/> as an exactly-once sink named
    /// <paramref name="name"/> (see UpsertWriter.sinkExactlyOnce): each batch is written with the
    /// source offsets of its messages, and on assignment the runtime resumes past the offsets already
    /// applied. The writer must come from <see cref="CreateExactlyOnceAsync"/> with the workflow's
    /// group.</summary>
    /// <param name="pipe">The pipe, ending in batches (e.g. after PipeCore.Aggregate).</param>
    /// <param name="name">The sink's name (logs, failures, stage policies).</param>
    /// <param name="writer">An exactly-once writer for the workflow's group.</param>
    /// <param name="written">Called with the batch's size after each batch is committed (on the
    /// writing thread). Default null: none.</param>
    static member SinkExactlyOnce
        (
            pipe: Pipe<'i, IReadOnlyList<'a>>,
            name: string,
            writer: UpsertWriter<'a>,
            [<Optional; DefaultParameterValue(null: Action<int>)>] written: Action<int>
        ) : Pipe<'i, Sunk> =
        let listOf, adapted = UpsertWriterCore.ListPipelining writer

        pipe
        |> Pipe.sinkExactlyOnceWith adapted name writer.AppliedOffsets (fun positions ->
            UpsertWriterCore.Reporting(writer.ClaimedWrite positions, listOf, written))
