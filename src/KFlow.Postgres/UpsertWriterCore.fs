// The C# face of UpsertWriter: a connection string, IReadOnlyList columns and a Func row mapper in;
// batches as IReadOnlyList, so the C# facade never builds an F# list or function.
namespace KFlow.Postgres

open System
open System.Collections.Generic
open System.Threading.Tasks

/// Creating and using upsert writers from C#; the F# API is `UpsertConfig` + `UpsertWriter`.
[<AbstractClass; Sealed>]
type UpsertWriterCore =
    /// <summary>Creates a writer (see UpsertWriter.create): checks the table, its columns and its unique
    /// key now. <paramref name="row"/> returns a record's values in the order of
    /// <paramref name="fields"/> (null for NULL). Default retries: 10 attempts, 100 ms to 5 s.</summary>
    static member CreateAsync
        (
            connectionString: string,
            table: string,
            fields: IReadOnlyList<string>,
            keys: IReadOnlyList<string>,
            row: Func<'a, obj[]>
        ) : Task<UpsertWriter<'a>> =
        if isNull row then
            raise (ArgumentNullException("row", "Give the row mapper: a record's values in field order."))

        let config =
            UpsertConfig.create
                (PgConnection.ConnectionString connectionString)
                table
                (if isNull fields then [] else List.ofSeq fields)
                (if isNull keys then [] else List.ofSeq keys)
                row.Invoke

        UpsertWriter.create config

    /// Upserts one batch atomically; the Task succeeds once it is committed.
    static member WriteAsync(writer: UpsertWriter<'a>, batch: IReadOnlyList<'a>) : Task =
        writer.Write(List.ofSeq batch)
